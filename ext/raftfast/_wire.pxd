# The byte layout shared by every extension: little-endian loads and
# stores and the entry block (ext/rfwire.h holds the C, which kvcmd.h uses
# too).  A declarations-only contract: `from raftfast._wire cimport ...`
# compiles the inline C into the extension; there is no module to import.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t

cdef extern from "rfwire.h" nogil:
    enum:
        ENTRY_HEADER "RF_ENTRY_HEADER"        # u32 data_len | u64 term | u8 type
        ENTRY_TERM_AT "RF_ENTRY_TERM_AT"
        ENTRY_TYPE_AT "RF_ENTRY_TYPE_AT"
        ENTRY_NORMAL "RF_ENTRY_NORMAL"
        ENTRY_NOOP "RF_ENTRY_NOOP"
        ENTRY_CONFIG "RF_ENTRY_CONFIG"
        ENTRY_TIME "RF_ENTRY_TIME"
        ENTRY_TYPE_MAX "RF_ENTRY_TYPE_MAX"

    uint16_t ld16 "rf_ld16" (const uint8_t *p) noexcept
    uint32_t ld32 "rf_ld32" (const uint8_t *p) noexcept
    uint64_t ld64 "rf_ld64" (const uint8_t *p) noexcept
    void st16 "rf_st16" (uint8_t *p, uint16_t v) noexcept
    void st32 "rf_st32" (uint8_t *p, uint32_t v) noexcept
    void st64 "rf_st64" (uint8_t *p, uint64_t v) noexcept

    ctypedef enum BlockStatus "rf_block_status":
        BLOCK_OK "RF_BLOCK_OK"
        BLOCK_SHORT_HEADER "RF_BLOCK_SHORT_HEADER"
        BLOCK_DATA_PAST_END "RF_BLOCK_DATA_PAST_END"
        BLOCK_BAD_TYPE "RF_BLOCK_BAD_TYPE"

    BlockStatus block_walk "rf_block_walk" (const uint8_t *p, size_t n, unsigned type_max,
                                            size_t *count, size_t *at) noexcept

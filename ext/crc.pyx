# cython: language_level=3
"""CRC32C for Python callers (storage metadata, tests); the C extensions
include crc32c.h directly."""
from libc.stdint cimport uint8_t, uint32_t

cdef extern from "crc32c.h":
    uint32_t rf_crc32c(uint32_t crc, const uint8_t *p, size_t n) nogil
    uint32_t rf_crc32c_portable(uint32_t crc, const uint8_t *p, size_t n) nogil


def crc32c(const uint8_t[::1] data not None, uint32_t crc=0):
    """CRC32C of data, optionally extending a previous checksum."""
    if data.shape[0] == 0:
        return rf_crc32c(crc, NULL, 0)
    return rf_crc32c(crc, &data[0], data.shape[0])


def crc32c_portable(const uint8_t[::1] data not None, uint32_t crc=0):
    """The table-driven path, whatever the CPU offers (for tests)."""
    if data.shape[0] == 0:
        return rf_crc32c_portable(crc, NULL, 0)
    return rf_crc32c_portable(crc, &data[0], data.shape[0])

/* The KV command payload, shared by kv.pyx (encode_commands, KVStore) and
 * resp.pyx (RespParser.parse_kv, which encodes client requests straight
 * into entries).  Header-only, like rfstr.h: each extension compiles its
 * own copy.  The format itself is documented in kv.pyx; the entry header
 * and the byte order come from rfwire.h.
 */
#ifndef RAFTFAST_KVCMD_H
#define RAFTFAST_KVCMD_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "rfwire.h"

#define RF_CMD_HEADER 5          /* u8 opcode, u32 argc */

/* Opcodes are part of the log format: never reuse a number. */
#define RF_OP_SET 1
#define RF_OP_GET 2
#define RF_OP_MGET 3
#define RF_OP_EXISTS 4
#define RF_OP_DEL 5
#define RF_OP_APPEND 6
#define RF_OP_INCR 7
/* High bit of the opcode byte: the client that sent the command reads
 * RESP3, so its reply is encoded in RESP3.  Apply ignores it otherwise. */
#define RF_OP_RESP3 0x80
#define RF_OP_MASK 0x7F

/* Entry header (term 0: the core stamps it) plus command header. */
static inline void rf_put_command_header(uint8_t *p, uint32_t data_len, uint8_t opcode,
                                         uint32_t argc) {
    rf_st32(p, data_len);
    memset(p + RF_ENTRY_TERM_AT, 0, 8);
    p[RF_ENTRY_TYPE_AT] = RF_ENTRY_NORMAL;
    p[RF_ENTRY_HEADER] = opcode;
    rf_st32(p + RF_ENTRY_HEADER + 1, argc);
}

/* APPEND's entry carries a third argument the client did not send: the
 * proposing leader's proto-max-bulk-len as a u64, so every replica refuses
 * the same APPENDs whatever its own setting.  An entry without it (written
 * before the limit existed) appends without a limit. */
#define RF_APPEND_LIMIT_ARG 12   /* u32 length (8), u64 limit */

static inline void rf_put_append_limit(uint8_t *p, uint64_t limit) {
    rf_st32(p, 8);
    rf_st64(p + 4, limit);
}

/* Arguments (excluding the command name) each opcode takes from a client. */
static inline int rf_kv_arity_ok(unsigned op, uint64_t argc) {
    switch (op) {
    case RF_OP_GET: case RF_OP_INCR: return argc == 1;
    case RF_OP_SET: case RF_OP_APPEND: return argc == 2;
    case RF_OP_MGET: case RF_OP_EXISTS: case RF_OP_DEL: return argc >= 1;
    default: return 0;
    }
}

/* Arguments an entry of each opcode may hold in the log. */
static inline int rf_kv_entry_arity_ok(unsigned op, uint64_t argc) {
    return rf_kv_arity_ok(op, argc) || (op == RF_OP_APPEND && argc == 3);
}

/* The opcode of a command name (ASCII case-insensitive), or 0.  c | 0x20
 * equals a lowercase letter only for that letter in either case. */
static inline int rf_kv_opcode(const unsigned char *s, size_t n) {
    unsigned char b[6];
    size_t i;
    if (n < 3 || n > 6)
        return 0;
    for (i = 0; i < n; i++)
        b[i] = s[i] | 0x20;
#define RF_IS(lit) (memcmp(b, lit, n) == 0)
    switch (n) {
    case 3:
        if (RF_IS("get")) return RF_OP_GET;
        if (RF_IS("set")) return RF_OP_SET;
        if (RF_IS("del")) return RF_OP_DEL;
        return 0;
    case 4:
        if (RF_IS("mget")) return RF_OP_MGET;
        if (RF_IS("incr")) return RF_OP_INCR;
        return 0;
    case 6:
        if (RF_IS("exists")) return RF_OP_EXISTS;
        if (RF_IS("append")) return RF_OP_APPEND;
        return 0;
    default:
        return 0;
    }
#undef RF_IS
}

#endif /* RAFTFAST_KVCMD_H */

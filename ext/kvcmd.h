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
#define RF_OP_SETNX 8
#define RF_OP_GETDEL 9
#define RF_OP_MSET 10
#define RF_OP_INCRBY 11
#define RF_OP_DECR 12
#define RF_OP_DECRBY 13
#define RF_OP_STRLEN 14
#define RF_OP_EXPIRE 15
#define RF_OP_PEXPIRE 16
#define RF_OP_TTL 17
#define RF_OP_PTTL 18
#define RF_OP_PERSIST 19
#define RF_OP_DBSIZE 20
#define RF_OP_SCAN 21
#define RF_OP_EXEC 22            /* RAFT.EXEC session seq command args... */
/* Written by the server itself, never parsed from a client's request: */
#define RF_OP_SESSION_OPEN 23    /* RAFT.SESSION OPEN */
#define RF_OP_EXPIRE_DEL 24      /* the leader's active expiry: delete keys still expired */
#define RF_OP_MAX 24
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
 * before the limit existed) appends without a limit.  RAFT.EXEC's entry
 * always ends with it (its command may be an APPEND). */
#define RF_APPEND_LIMIT_ARG 12   /* u32 length (8), u64 limit */

static inline void rf_put_append_limit(uint8_t *p, uint64_t limit) {
    rf_st32(p, 8);
    rf_st64(p + 4, limit);
}

/* Does the entry of this opcode carry the proposer's limit as its last
 * argument (APPEND's is optional, RAFT.EXEC's always there)? */
static inline int rf_kv_has_limit(unsigned op) {
    return op == RF_OP_APPEND || op == RF_OP_EXEC;
}

/* Arguments (excluding the command name) each opcode takes from a client:
 * Redis 7.2's arity (MSET: pairs).  Options are checked when applied. */
static inline int rf_kv_arity_ok(unsigned op, uint64_t argc) {
    switch (op) {
    case RF_OP_GET: case RF_OP_INCR: case RF_OP_GETDEL: case RF_OP_DECR:
    case RF_OP_STRLEN: case RF_OP_TTL: case RF_OP_PTTL: case RF_OP_PERSIST:
        return argc == 1;
    case RF_OP_APPEND: case RF_OP_SETNX: case RF_OP_INCRBY: case RF_OP_DECRBY:
        return argc == 2;
    case RF_OP_SET: case RF_OP_EXPIRE: case RF_OP_PEXPIRE: return argc >= 2;
    case RF_OP_MGET: case RF_OP_EXISTS: case RF_OP_DEL: case RF_OP_SCAN: return argc >= 1;
    case RF_OP_MSET: return argc >= 2 && argc % 2 == 0;
    case RF_OP_DBSIZE: return argc == 0;
    case RF_OP_EXEC: return argc >= 3;
    default: return 0;
    }
}

/* Arguments an entry of each opcode may hold in the log. */
static inline int rf_kv_entry_arity_ok(unsigned op, uint64_t argc) {
    switch (op) {
    case RF_OP_APPEND: return argc == 2 || argc == 3;
    case RF_OP_EXEC: return argc >= 4;
    case RF_OP_SESSION_OPEN: return argc == 0;
    case RF_OP_EXPIRE_DEL: return argc >= 1;
    default: return rf_kv_arity_ok(op, argc);
    }
}

/* Commands that change nothing: a leader answers them without the log
 * (ReadIndex), at the read's cluster time. */
static inline int rf_kv_is_read(unsigned op) {
    switch (op) {
    case RF_OP_GET: case RF_OP_MGET: case RF_OP_EXISTS: case RF_OP_STRLEN:
    case RF_OP_TTL: case RF_OP_PTTL: case RF_OP_DBSIZE: case RF_OP_SCAN:
        return 1;
    default:
        return 0;
    }
}

/* The opcode of a command name (ASCII case-insensitive), or 0.  c | 0x20
 * equals a lowercase letter only for that letter in either case. */
static inline int rf_kv_opcode(const unsigned char *s, size_t n) {
    unsigned char b[9];
    size_t i;
    if (n < 3 || n > 9)
        return 0;
    for (i = 0; i < n; i++)
        b[i] = s[i] | 0x20;
#define RF_IS(lit) (memcmp(b, lit, n) == 0)
    switch (n) {
    case 3:
        if (RF_IS("get")) return RF_OP_GET;
        if (RF_IS("set")) return RF_OP_SET;
        if (RF_IS("del")) return RF_OP_DEL;
        if (RF_IS("ttl")) return RF_OP_TTL;
        return 0;
    case 4:
        if (RF_IS("mget")) return RF_OP_MGET;
        if (RF_IS("incr")) return RF_OP_INCR;
        if (RF_IS("mset")) return RF_OP_MSET;
        if (RF_IS("decr")) return RF_OP_DECR;
        if (RF_IS("pttl")) return RF_OP_PTTL;
        if (RF_IS("scan")) return RF_OP_SCAN;
        return 0;
    case 5:
        if (RF_IS("setnx")) return RF_OP_SETNX;
        return 0;
    case 6:
        if (RF_IS("exists")) return RF_OP_EXISTS;
        if (RF_IS("append")) return RF_OP_APPEND;
        if (RF_IS("getdel")) return RF_OP_GETDEL;
        if (RF_IS("incrby")) return RF_OP_INCRBY;
        if (RF_IS("decrby")) return RF_OP_DECRBY;
        if (RF_IS("strlen")) return RF_OP_STRLEN;
        if (RF_IS("expire")) return RF_OP_EXPIRE;
        if (RF_IS("dbsize")) return RF_OP_DBSIZE;
        return 0;
    case 7:
        if (RF_IS("pexpire")) return RF_OP_PEXPIRE;
        if (RF_IS("persist")) return RF_OP_PERSIST;
        return 0;
    case 9:
        /* '.' | 0x20 is '.', but so is 0x0E | 0x20: the dot is checked as sent. */
        if (s[4] == '.' && RF_IS("raft.exec")) return RF_OP_EXEC;
        return 0;
    default:
        return 0;
    }
#undef RF_IS
}

#endif /* RAFTFAST_KVCMD_H */

/*
 * skyhost.c: the session table and the exports behind skyhost.h.
 *
 * The exports `init` and `dispatch-batch` come here; dispatch hands each answer
 * to a session this service waits on to its callback, and everything else
 * to sky_handle. Sessions waited on are few at a time, so a small array is
 * searched (swap-remove on answer). Calls go through `call-now`: a callee
 * that answers inside the call leaves its answer in a queue whose callbacks
 * run after the current handler.
 */
#include <stdlib.h>
#include <string.h>

#include "batch_service.h"
#include "skyhost.h"

typedef struct {
    uint32_t session;
    sky_answer_fn fn;
    void *ctx;
} waiting;

static waiting *waits;
static size_t waits_len, waits_cap;

static void wait_for(uint32_t session, sky_answer_fn fn, void *ctx) {
    if (waits_len == waits_cap) {
        size_t cap = waits_cap ? waits_cap * 2 : 16;
        waiting *grown = realloc(waits, cap * sizeof *grown);
        if (!grown) {
            abort();
        }
        waits = grown;
        waits_cap = cap;
    }
    waits[waits_len++] = (waiting){session, fn, ctx};
}

/* Runs the callback waiting on `msg->session`; false if none waits. */
static bool answer(const sky_msg *msg) {
    for (size_t i = 0; i < waits_len; i++) {
        if (waits[i].session == msg->session) {
            waiting w = waits[i];
            waits[i] = waits[--waits_len];
            w.fn(w.ctx, msg);
            return true;
        }
    }
    return false;
}

/* Answers a callee gave inside sky_call (it ran on this service's thread,
 * the direct hand-off): each callback runs once the handler or callback
 * that made the call has returned, in the order the calls were made, as an
 * answer from the mailbox would; never inside sky_call itself. */
typedef struct {
    sky_answer_fn fn;
    void *ctx;
    skyhost_service_types_message_t msg;
} answered;

static answered *ready;
static size_t ready_next, ready_len, ready_cap;

static void answer_later(sky_answer_fn fn, void *ctx, skyhost_service_types_message_t msg) {
    if (ready_len == ready_cap) {
        size_t cap = ready_cap ? ready_cap * 2 : 8;
        answered *grown = realloc(ready, cap * sizeof *grown);
        if (!grown) {
            abort();
        }
        ready = grown;
        ready_cap = cap;
    }
    ready[ready_len++] = (answered){fn, ctx, msg};
}

/* Runs the callbacks of the answers given inside calls, including those of
 * calls their callbacks make. */
static void run_answered(void) {
    while (ready_next < ready_len) {
        answered a = ready[ready_next++];
        sky_msg m = {a.msg.kind, a.msg.source, a.msg.session, a.msg.payload.ptr, a.msg.payload.len};
        a.fn(a.ctx, &m);
        skyhost_service_types_message_free(&a.msg);
    }
    ready_next = ready_len = 0;
}

/* The init of a service that has none of its own. */
__attribute__((weak)) int sky_init(const uint8_t *args, size_t len, const char **error) {
    (void)args;
    (void)len;
    (void)error;
    return 0;
}

static batch_service_list_u8_t bytes(const void *data, size_t len) {
    return (batch_service_list_u8_t){(uint8_t *)data, len};
}

static batch_service_string_t text(const char *s) {
    return (batch_service_string_t){(uint8_t *)s, strlen(s)};
}

bool exports_batch_service_init(batch_service_list_u8_t *args, batch_service_string_t *err) {
    const char *error = NULL;
    int failed = sky_init(args->ptr, args->len, &error);
    run_answered();
    batch_service_list_u8_free(args);
    if (failed) {
        batch_service_string_dup(err, error ? error : "init failed");
        return false;
    }
    return true;
}

/* Reads a little-endian u32 from `p` (the buffer may be unaligned). */
static uint32_t u32_at(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* The batch buffer (wit/service.wit, `dispatch-batch`): a count, 32-byte
 * headers from offset 8, then the payloads. Each message is handed over
 * in place: `data` points into the buffer, valid until sky_handle returns. */
void exports_batch_service_dispatch_batch(batch_service_list_u8_t *batch) {
    const uint8_t *b = batch->ptr;
    size_t len = batch->len;
    uint32_t count = len >= 8 ? u32_at(b) : 0;
    for (uint32_t i = 0; i < count; i++) {
        size_t at = 8 + (size_t)i * 32;
        if (at + 32 > len) {
            break;
        }
        const uint8_t *h = b + at;
        size_t offset = u32_at(h + 12), n = u32_at(h + 16);
        if (offset > len || n > len - offset) {
            break;
        }
        sky_msg msg = {h[0], u32_at(h + 4), u32_at(h + 8), b + offset, n};
        bool is_answer = msg.kind == SKY_RESPONSE || msg.kind == SKY_ERROR;
        if (!is_answer || !answer(&msg)) {
            sky_handle(&msg);
        }
        run_answered();
    }
    batch_service_list_u8_free(batch);
}

sky_addr sky_self(void) { return skyhost_service_runtime_self_address(); }

int sky_send(sky_addr dest, uint8_t kind, const void *data, size_t len) {
    batch_service_list_u8_t payload = bytes(data, len);
    skyhost_service_runtime_send_error_t err;
    if (skyhost_service_runtime_send(dest, kind, 0, &payload, &err)) {
        return SKY_OK;
    }
    return 1 + err;
}

int sky_call(sky_addr dest, const void *data, size_t len, sky_answer_fn fn, void *ctx) {
    batch_service_list_u8_t payload = bytes(data, len);
    skyhost_service_runtime_call_started_t started;
    skyhost_service_runtime_send_error_t err;
    if (!skyhost_service_runtime_call_now(dest, &payload, 0, &started, &err)) {
        return 1 + err;
    }
    if (started.answer.is_some) {
        answer_later(fn, ctx, started.answer.val);
    } else {
        wait_for(started.session, fn, ctx);
    }
    return SKY_OK;
}

int sky_respond(sky_addr dest, uint32_t session, const void *data, size_t len) {
    skyhost_service_runtime_result_list_u8_string_t reply = {.is_err = false};
    reply.val.ok = bytes(data, len);
    skyhost_service_runtime_send_error_t err;
    return skyhost_service_runtime_respond(dest, session, &reply, &err) ? SKY_OK : 1 + err;
}

int sky_respond_error(sky_addr dest, uint32_t session, const char *detail) {
    skyhost_service_runtime_result_list_u8_string_t reply = {.is_err = true};
    reply.val.err = text(detail);
    skyhost_service_runtime_send_error_t err;
    return skyhost_service_runtime_respond(dest, session, &reply, &err) ? SKY_OK : 1 + err;
}

void sky_timeout(uint32_t ms, sky_answer_fn fn, void *ctx) {
    wait_for(skyhost_service_runtime_timeout(ms), fn, ctx);
}

void sky_spawn(const char *module, const void *args, size_t len, sky_answer_fn fn, void *ctx) {
    batch_service_string_t name = text(module);
    batch_service_list_u8_t a = bytes(args, len);
    wait_for(skyhost_service_runtime_spawn(&name, &a), fn, ctx);
}

int sky_register(const char *name) {
    batch_service_string_t n = text(name);
    skyhost_service_runtime_name_error_t err;
    return skyhost_service_runtime_register(&n, &err) ? SKY_OK : 1 + err;
}

bool sky_query(const char *name, sky_addr *out) {
    batch_service_string_t n = text(name);
    return skyhost_service_runtime_query(&n, out);
}

void sky_monitor(sky_addr target) { skyhost_service_runtime_monitor(target); }

void sky_log(const char *line) {
    batch_service_string_t s = text(line);
    skyhost_service_runtime_log(SKYHOST_SERVICE_TYPES_LOG_LEVEL_INFO, &s);
}

const char *sky_send_error_name(int error) {
    switch (error) {
    case SKY_OK: return "ok";
    case SKY_UNKNOWN_ADDRESS: return "unknown-address";
    case SKY_OVERLOADED: return "overloaded";
    case SKY_TOO_LARGE: return "too-large";
    case SKY_RESERVED_KIND: return "reserved-kind";
    case SKY_NODE_DOWN: return "node-down";
    default: return "unknown";
    }
}

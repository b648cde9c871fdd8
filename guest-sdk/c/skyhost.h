/*
 * skyhost.h: write skyhost services in C.
 *
 * A service implements two functions, sky_init and sky_handle, and calls the
 * functions below. Everything that waits (a call, a timer, a spawn) takes a
 * callback: it returns at once, and the callback runs when the answer to its
 * session arrives, while other messages are handled in between (as Skynet's
 * coroutines, without them). Requests are answered with sky_respond or
 * sky_respond_error, now or later (keep the caller's address and session).
 *
 * Built on the raw imports that wit-bindgen's C generator makes from
 * wit/service.wit (service.h); those stay usable for everything else
 * (harbor, cluster, multicast).
 */
#ifndef SKYHOST_H
#define SKYHOST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* A service's address: (local id << 8) | harbor id. */
typedef uint32_t sky_addr;

/* Message kinds (wit: types.kind). */
enum {
    SKY_TEXT = 0,
    SKY_RESPONSE = 1,
    SKY_MULTICAST = 2,
    SKY_EXIT = 3,
    SKY_ERROR = 7,
    SKY_REQUEST = 10,
    SKY_USER = 16,
};

/* Send errors (wit: types.send-error), returned as 1 + the error; 0 is success. */
enum {
    SKY_OK = 0,
    SKY_UNKNOWN_ADDRESS = 1,
    SKY_OVERLOADED = 2,
    SKY_TOO_LARGE = 3,
    SKY_RESERVED_KIND = 4,
    SKY_NODE_DOWN = 5,
};

/* One message. `data` lives until the handler or callback returns. */
typedef struct {
    uint8_t kind;
    sky_addr source;
    uint32_t session;
    const uint8_t *data;
    size_t len;
} sky_msg;

/* The answer to a session this service opened: kind SKY_RESPONSE (data is
 * the reply) or SKY_ERROR (data[0] is the error cause, the rest a detail). */
typedef void (*sky_answer_fn)(void *ctx, const sky_msg *answer);

/* Implemented by the service. sky_init gets the spawn arguments; return 0,
 * or non-zero with *error set to a static text to fail the spawn (optional:
 * without one the service starts with nothing to do). */
int sky_init(const uint8_t *args, size_t len, const char **error);
/* Every message that is not the answer to a session this service waits on. */
void sky_handle(const sky_msg *msg);

/* This service's own address. */
sky_addr sky_self(void);
/* Send a message (kind SKY_TEXT or >= SKY_USER); 0 or a send error. */
int sky_send(sky_addr dest, uint8_t kind, const void *data, size_t len);
/* Call `dest`; `fn(ctx, answer)` runs when it answers. 0 or a send error
 * (then `fn` never runs). An idle callee on this node may run inside the
 * call and answer at once; `fn` then runs right after the handler or
 * callback that called returns, never inside sky_call. */
int sky_call(sky_addr dest, const void *data, size_t len, sky_answer_fn fn, void *ctx);
/* Answer a request. */
int sky_respond(sky_addr dest, uint32_t session, const void *data, size_t len);
/* Answer a request with an error text. */
int sky_respond_error(sky_addr dest, uint32_t session, const char *text);
/* After `ms` milliseconds, `fn` runs with an empty SKY_RESPONSE. */
void sky_timeout(uint32_t ms, sky_answer_fn fn, void *ctx);
/* Start a service of `module`; `fn` gets its address (4 bytes, little
 * endian) as a SKY_RESPONSE once its init succeeded, or a SKY_ERROR. */
void sky_spawn(const char *module, const void *args, size_t len, sky_answer_fn fn, void *ctx);
/* Give this service a name; 0, or 1 + the name error (invalid, taken, unavailable). */
int sky_register(const char *name);
/* The address holding `name`; false if none. */
bool sky_query(const char *name, sky_addr *out);
/* Be told with a SKY_EXIT message when `target` ends. */
void sky_monitor(sky_addr target);
/* Write an info log line. */
void sky_log(const char *text);
/* The wit name of a send error ("unknown-address", ...). */
const char *sky_send_error_name(int error);

#endif

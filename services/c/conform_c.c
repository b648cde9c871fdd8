/*
 * conform_c: the conformance suite's service in C (docs/languages.md).
 * One opcode byte, then its arguments; addresses are 4 bytes little-endian.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "skyhost.h"

/* Sources of the exit notices received, 4 bytes each. */
static uint8_t *exits;
static size_t exits_len;

/* Whom to answer when a session of ours ends. */
typedef struct {
    sky_addr caller;
    uint32_t session;
} pending;

static pending *remember(const sky_msg *request) {
    pending *p = malloc(sizeof *p);
    if (!p) {
        abort();
    }
    *p = (pending){request->source, request->session};
    return p;
}

/* Set while sky_call runs: its callback must not run inside it. */
static bool calling;

/* Forwards an answer: the reply, or `cause=<n>`. */
static void forward(void *ctx, const sky_msg *answer) {
    if (calling) {
        abort(); /* skyhost.h: an answer given at once runs after the handler. */
    }
    pending *p = ctx;
    if (answer->kind == SKY_RESPONSE) {
        sky_respond(p->caller, p->session, answer->data, answer->len);
    } else {
        char text[32];
        snprintf(text, sizeof text, "cause=%u", answer->len ? answer->data[0] : 255u);
        sky_respond_error(p->caller, p->session, text);
    }
    free(p);
}

static sky_addr address(const uint8_t *args) {
    return (sky_addr)args[0] | (sky_addr)args[1] << 8 | (sky_addr)args[2] << 16 |
           (sky_addr)args[3] << 24;
}

/* The arguments as a NUL-terminated string (freed by the caller). */
static char *string(const uint8_t *args, size_t len) {
    char *s = malloc(len + 1);
    if (!s) {
        abort();
    }
    memcpy(s, args, len);
    s[len] = 0;
    return s;
}

void sky_handle(const sky_msg *m) {
    if (m->kind == SKY_EXIT) {
        uint8_t *grown = realloc(exits, exits_len + 4);
        if (!grown) {
            abort();
        }
        exits = grown;
        for (int i = 0; i < 4; i++) {
            exits[exits_len++] = (uint8_t)(m->source >> (8 * i));
        }
        return;
    }
    if (m->kind != SKY_REQUEST) {
        return;
    }
    if (m->len == 0) {
        sky_respond_error(m->source, m->session, "empty request");
        return;
    }
    const uint8_t *args = m->data + 1;
    size_t n = m->len - 1;
    uint8_t op = m->data[0];
    if (strchr("scum", op) && n < 4) {
        sky_respond_error(m->source, m->session, "no address");
        return;
    }
    switch (op) {
    case 'e':
        sky_respond(m->source, m->session, args, n);
        break;
    case 's': {
        int err = sky_send(address(args), SKY_TEXT, args + 4, n - 4);
        if (err) {
            sky_respond_error(m->source, m->session, sky_send_error_name(err));
        } else {
            sky_respond(m->source, m->session, "", 0);
        }
        break;
    }
    case 'c': {
        pending *p = remember(m);
        calling = true;
        int err = sky_call(address(args), args + 4, n - 4, forward, p);
        calling = false;
        if (err) {
            char text[48];
            snprintf(text, sizeof text, "send=%s", sky_send_error_name(err));
            sky_respond_error(m->source, m->session, text);
            free(p);
        }
        break;
    }
    case 'r': {
        char *name = string(args, n);
        int err = sky_register(name);
        free(name);
        if (err) {
            sky_respond_error(m->source, m->session, "register failed");
        } else {
            sky_respond(m->source, m->session, "", 0);
        }
        break;
    }
    case 'q': {
        char *name = string(args, n);
        sky_addr found;
        bool known = sky_query(name, &found);
        free(name);
        uint8_t out[4] = {found, found >> 8, found >> 16, found >> 24};
        sky_respond(m->source, m->session, out, known ? 4 : 0);
        break;
    }
    case 't': {
        if (n != 4) {
            sky_respond_error(m->source, m->session, "t: ms is 4 bytes");
            break;
        }
        sky_timeout(address(args), forward, remember(m));
        break;
    }
    case 'p': {
        char *module = string(args, n);
        sky_spawn(module, "", 0, forward, remember(m));
        free(module);
        break;
    }
    case 'u': {
        int err = sky_send(address(args), SKY_TEXT, "", 0);
        const char *name = err ? sky_send_error_name(err) : "";
        sky_respond(m->source, m->session, name, strlen(name));
        break;
    }
    case 'x':
        __builtin_trap();
    case 'm':
        sky_monitor(address(args));
        sky_respond(m->source, m->session, "", 0);
        break;
    case 'n':
        sky_respond(m->source, m->session, exits, exits_len);
        break;
    default:
        sky_respond_error(m->source, m->session, "unknown op");
    }
}

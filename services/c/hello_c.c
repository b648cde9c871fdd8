/*
 * hello_c: the README's first service in C (keep the two the same).
 * Registers ".hello_c"; a request carries a name (utf-8) and is answered,
 * 10 ms later, with "hello, <name>". Other requests are handled meanwhile.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "skyhost.h"

/* A request waiting for its timer. */
typedef struct {
    sky_addr caller;
    uint32_t session;
    char text[80];
} greeting;

static void greet(void *ctx, const sky_msg *timer) {
    (void)timer;
    greeting *g = ctx;
    sky_respond(g->caller, g->session, g->text, strlen(g->text));
    free(g);
}

int sky_init(const uint8_t *args, size_t len, const char **error) {
    (void)args;
    (void)len;
    if (sky_register(".hello_c") != SKY_OK) {
        *error = "could not register .hello_c";
        return 1;
    }
    return 0;
}

void sky_handle(const sky_msg *m) {
    if (m->kind != SKY_REQUEST) {
        return;
    }
    greeting *g = malloc(sizeof *g);
    if (!g) {
        sky_respond_error(m->source, m->session, "out of memory");
        return;
    }
    g->caller = m->source;
    g->session = m->session;
    snprintf(g->text, sizeof g->text, "hello, %.*s", (int)m->len, (const char *)m->data);
    sky_timeout(10, greet, g);
}

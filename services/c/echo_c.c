/* echo_c: answers every request with its payload unchanged (C). */
#include "skyhost.h"

int sky_init(const uint8_t *args, size_t len, const char **error) {
    (void)args;
    (void)len;
    (void)error;
    return 0;
}

void sky_handle(const sky_msg *m) {
    if (m->kind == SKY_REQUEST) {
        sky_respond(m->source, m->session, m->data, m->len);
    }
}

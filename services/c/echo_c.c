/* echo_c: answers every request with its payload unchanged (C). */
#include "skyhost.h"

void sky_handle(const sky_msg *m) {
    if (m->kind == SKY_REQUEST) {
        sky_respond(m->source, m->session, m->data, m->len);
    }
}

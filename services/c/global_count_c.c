/* global_count_c: counts the text messages it is sent in a wasm global of
 * its own (not in its linear memory), and answers every request with the
 * count (4 bytes, little-endian). A test service: what it knows lives only
 * where a memory image must carry globals to keep it (docs/hibernation.md). */
#include <stdint.h>

#include "skyhost.h"

__asm__(".globaltype sky_text_count, i32\nsky_text_count:\n");

static uint32_t text_count(void) {
    uint32_t n;
    __asm__ volatile("global.get sky_text_count\n\tlocal.set %0" : "=r"(n));
    return n;
}

static void set_text_count(uint32_t n) {
    __asm__ volatile("local.get %0\n\tglobal.set sky_text_count" : : "r"(n));
}

void sky_handle(const sky_msg *m) {
    if (m->kind == SKY_TEXT) {
        set_text_count(text_count() + 1);
    } else if (m->kind == SKY_REQUEST) {
        uint32_t n = text_count();
        uint8_t bytes[4] = {(uint8_t)n, (uint8_t)(n >> 8), (uint8_t)(n >> 16), (uint8_t)(n >> 24)};
        sky_respond(m->source, m->session, bytes, sizeof bytes);
    }
}

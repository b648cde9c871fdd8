//! echo_zig: answers every request with its payload unchanged (Zig).
const sky = @import("skyhost.zig");

export fn sky_handle(m: *const sky.Msg) void {
    if (m.kind == sky.kind.request) {
        sky.respond(m.source, m.session, m.payload()) catch {};
    }
}

//! hello_zig: the README's first service in Zig (keep the two the same).
//! Registers ".hello_zig"; a request carries a name (utf-8) and is
//! answered, 10 ms later, with "hello, <name>". Other requests are handled
//! meanwhile.
const std = @import("std");
const sky = @import("skyhost.zig");

pub const panic = sky.panic;

/// A request waiting for its timer.
const Greeting = struct {
    caller: sky.Addr,
    session: u32,
    text: []u8,
};

const allocator = std.heap.c_allocator;

fn greet(ctx: ?*anyopaque, _: *const sky.Msg) callconv(.c) void {
    const g: *Greeting = @ptrCast(@alignCast(ctx));
    sky.respond(g.caller, g.session, g.text) catch {};
    allocator.free(g.text);
    allocator.destroy(g);
}

export fn sky_init(_: [*]const u8, _: usize, err: *?[*:0]const u8) c_int {
    sky.register(".hello_zig") catch {
        err.* = "could not register .hello_zig";
        return 1;
    };
    return 0;
}

export fn sky_handle(m: *const sky.Msg) void {
    if (m.kind != sky.kind.request) return;
    const g = allocator.create(Greeting) catch {
        sky.respondError(m.source, m.session, "out of memory") catch {};
        return;
    };
    const text = std.mem.concat(allocator, u8, &.{ "hello, ", m.payload() }) catch {
        allocator.destroy(g);
        sky.respondError(m.source, m.session, "out of memory") catch {};
        return;
    };
    g.* = .{ .caller = m.source, .session = m.session, .text = text };
    sky.after(10, greet, g);
}

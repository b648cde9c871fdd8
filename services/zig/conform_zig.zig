//! conform_zig: the conformance suite's service in Zig (docs/languages.md).
//! One opcode byte, then its arguments; addresses are 4 bytes little-endian.
const std = @import("std");
const sky = @import("skyhost.zig");

pub const panic = sky.panic;

const allocator = std.heap.c_allocator;

/// Sources of the exit notices received, 4 bytes each.
var exits: std.ArrayList(u8) = .empty;

/// Whom to answer when a session of ours ends.
const Pending = struct {
    caller: sky.Addr,
    session: u32,
};

fn remember(request: *const sky.Msg) *Pending {
    const p = allocator.create(Pending) catch @panic("out of memory");
    p.* = .{ .caller = request.source, .session = request.session };
    return p;
}

/// Forwards an answer: the reply, or `cause=<n>`.
fn forward(ctx: ?*anyopaque, answer: *const sky.Msg) callconv(.c) void {
    const p: *Pending = @ptrCast(@alignCast(ctx));
    defer allocator.destroy(p);
    if (answer.kind == sky.kind.response) {
        sky.respond(p.caller, p.session, answer.payload()) catch {};
        return;
    }
    const data = answer.payload();
    const cause: u32 = if (data.len > 0) data[0] else 255;
    var text: [32]u8 = undefined;
    const line = std.fmt.bufPrintSentinel(&text, "cause={d}", .{cause}, 0) catch return;
    sky.respondError(p.caller, p.session, line) catch {};
}

fn address(args: []const u8) sky.Addr {
    return std.mem.readInt(u32, args[0..4], .little);
}

/// The arguments as a NUL-terminated string (freed by the caller).
fn string(args: []const u8) [:0]u8 {
    return allocator.dupeSentinel(u8, args, 0) catch @panic("out of memory");
}

fn ok(m: *const sky.Msg) void {
    sky.respond(m.source, m.session, "") catch {};
}

fn fail(m: *const sky.Msg, text: [:0]const u8) void {
    sky.respondError(m.source, m.session, text) catch {};
}

export fn sky_handle(m: *const sky.Msg) void {
    if (m.kind == sky.kind.exit) {
        var bytes: [4]u8 = undefined;
        std.mem.writeInt(u32, &bytes, m.source, .little);
        exits.appendSlice(allocator, &bytes) catch @panic("out of memory");
        return;
    }
    if (m.kind != sky.kind.request) return;
    const data = m.payload();
    if (data.len == 0) return fail(m, "empty request");
    const op = data[0];
    const args = data[1..];
    if (std.mem.indexOfScalar(u8, "scum", op) != null and args.len < 4) {
        return fail(m, "no address");
    }
    switch (op) {
        'e' => sky.respond(m.source, m.session, args) catch {},
        's' => {
            sky.send(address(args), sky.kind.text, args[4..]) catch |e| return fail(m, sky.sendErrorName(e));
            ok(m);
        },
        'c' => {
            const p = remember(m);
            sky.call(address(args), args[4..], forward, p) catch |e| {
                allocator.destroy(p);
                var text: [48]u8 = undefined;
                const line = std.fmt.bufPrintSentinel(&text, "send={s}", .{sky.sendErrorName(e)}, 0) catch return;
                fail(m, line);
            };
        },
        'r' => {
            const name = string(args);
            defer allocator.free(name);
            sky.register(name) catch return fail(m, "register failed");
            ok(m);
        },
        'q' => {
            const name = string(args);
            defer allocator.free(name);
            var out: [4]u8 = undefined;
            const found = sky.query(name);
            std.mem.writeInt(u32, &out, found orelse 0, .little);
            sky.respond(m.source, m.session, if (found != null) &out else "") catch {};
        },
        't' => {
            if (args.len != 4) return fail(m, "t: ms is 4 bytes");
            sky.after(address(args), forward, remember(m));
        },
        'p' => {
            const module = string(args);
            defer allocator.free(module);
            sky.spawn(module, "", forward, remember(m));
        },
        'u' => {
            const name: []const u8 = if (sky.send(address(args), sky.kind.text, "")) |_| "" else |e| sky.sendErrorName(e);
            sky.respond(m.source, m.session, name) catch {};
        },
        'x' => @trap(),
        'm' => {
            sky.monitor(address(args));
            ok(m);
        },
        'n' => sky.respond(m.source, m.session, exits.items) catch {},
        else => fail(m, "unknown op"),
    }
}

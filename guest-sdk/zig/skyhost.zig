//! skyhost.zig: write skyhost services in Zig, on the C SDK
//! (`guest-sdk/c/skyhost.h`, linked in by the build; keep the two the same).
//!
//! A service exports `sky_handle` (every message that is not the answer to
//! a session it waits on) and, when it has something to set up, `sky_init`:
//!
//! ```zig
//! const sky = @import("skyhost.zig");
//! export fn sky_handle(m: *const sky.Msg) void {
//!     if (m.kind == sky.kind.request) sky.respond(m.source, m.session, m.payload()) catch {};
//! }
//! ```
//!
//! Everything that waits (a call, a timer, a spawn) takes a callback with a
//! context pointer: it returns at once, and the callback runs when the answer
//! to its session arrives, while other messages are handled in between.
//!
//! A service that can panic (`@panic`, `catch unreachable`, a failed safety
//! check) declares `pub const panic = sky.panic;` in its file: the message is
//! logged and the service traps (its caller gets a `trapped` error). Zig's
//! default handler writes to stderr and reads the module's debug info from
//! files: that links WASI's file system in, and the directories it opens at
//! start keep the service from hibernating.

const std = @import("std");

/// The panic handler for services: logs the message, then traps.
pub const panic = std.debug.FullPanic(panicked);

fn panicked(message: []const u8, _: ?usize) noreturn {
    @branchHint(.cold);
    var line: [256:0]u8 = undefined;
    const prefix = "panic: ";
    const n = @min(message.len, line.len - prefix.len);
    @memcpy(line[0..prefix.len], prefix);
    @memcpy(line[prefix.len..][0..n], message[0..n]);
    line[prefix.len + n] = 0;
    sky_log(&line);
    @trap();
}

/// A service's address: (local id << 8) | harbor id.
pub const Addr = u32;

/// Message kinds (wit: types.kind).
pub const kind = struct {
    pub const text: u8 = 0;
    pub const response: u8 = 1;
    pub const multicast: u8 = 2;
    pub const exit: u8 = 3;
    pub const failed: u8 = 7;
    pub const request: u8 = 10;
    pub const user: u8 = 16;
};

/// Why a message was not sent (wit: types.send-error).
pub const SendError = error{ UnknownAddress, Overloaded, TooLarge, ReservedKind, NodeDown };

/// Why a name was not registered (wit: types.name-error).
pub const RegisterError = error{ Invalid, Taken, Unavailable };

/// One message; its payload lives until the handler or callback returns.
pub const Msg = extern struct {
    kind: u8,
    source: Addr,
    session: u32,
    data: ?[*]const u8,
    len: usize,

    /// The payload's bytes.
    pub fn payload(m: *const Msg) []const u8 {
        return if (m.data) |d| d[0..m.len] else &.{};
    }
};

/// Runs with the answer to a session: kind `response` (the reply) or
/// `failed` (payload[0] is the error cause, the rest a detail).
pub const AnswerFn = *const fn (ctx: ?*anyopaque, answer: *const Msg) callconv(.c) void;

extern fn sky_self() Addr;
extern fn sky_send(dest: Addr, k: u8, data: ?*const anyopaque, len: usize) c_int;
extern fn sky_call(dest: Addr, data: ?*const anyopaque, len: usize, f: AnswerFn, ctx: ?*anyopaque) c_int;
extern fn sky_respond(dest: Addr, session: u32, data: ?*const anyopaque, len: usize) c_int;
extern fn sky_respond_error(dest: Addr, session: u32, text: [*:0]const u8) c_int;
extern fn sky_timeout(ms: u32, f: AnswerFn, ctx: ?*anyopaque) void;
extern fn sky_spawn(module: [*:0]const u8, args: ?*const anyopaque, len: usize, f: AnswerFn, ctx: ?*anyopaque) void;
extern fn sky_register(name: [*:0]const u8) c_int;
extern fn sky_query(name: [*:0]const u8, out: *Addr) bool;
extern fn sky_monitor(target: Addr) void;
extern fn sky_log(text: [*:0]const u8) void;

fn sent(code: c_int) SendError!void {
    return switch (code) {
        0 => {},
        1 => error.UnknownAddress,
        2 => error.Overloaded,
        3 => error.TooLarge,
        4 => error.ReservedKind,
        else => error.NodeDown,
    };
}

/// This service's own address.
pub fn address() Addr {
    return sky_self();
}

/// Sends a message (kind `text` or >= `user`).
pub fn send(dest: Addr, k: u8, data: []const u8) SendError!void {
    return sent(sky_send(dest, k, data.ptr, data.len));
}

/// Calls `dest`; `f(ctx, answer)` runs when it answers (never when this
/// returns an error; an answer given inside the call runs `f` right after
/// the handler or callback that called returns, never inside `call`).
pub fn call(dest: Addr, data: []const u8, f: AnswerFn, ctx: ?*anyopaque) SendError!void {
    return sent(sky_call(dest, data.ptr, data.len, f, ctx));
}

/// Answers a request.
pub fn respond(dest: Addr, session: u32, data: []const u8) SendError!void {
    return sent(sky_respond(dest, session, data.ptr, data.len));
}

/// Answers a request with an error text.
pub fn respondError(dest: Addr, session: u32, text: [:0]const u8) SendError!void {
    return sent(sky_respond_error(dest, session, text.ptr));
}

/// After `ms` milliseconds, `f` runs with an empty `response`.
pub fn after(ms: u32, f: AnswerFn, ctx: ?*anyopaque) void {
    sky_timeout(ms, f, ctx);
}

/// Starts a service of `module`; `f` gets its address (4 bytes, little
/// endian) as a `response` once its init succeeded, or a `failed`.
pub fn spawn(module: [:0]const u8, args: []const u8, f: AnswerFn, ctx: ?*anyopaque) void {
    sky_spawn(module.ptr, args.ptr, args.len, f, ctx);
}

/// Gives this service a name (`.name`: this node only).
pub fn register(name: [:0]const u8) RegisterError!void {
    return switch (sky_register(name.ptr)) {
        0 => {},
        1 => error.Invalid,
        2 => error.Taken,
        else => error.Unavailable,
    };
}

/// The address holding `name`, if any.
pub fn query(name: [:0]const u8) ?Addr {
    var found: Addr = 0;
    return if (sky_query(name.ptr, &found)) found else null;
}

/// Be told with an `exit` message when `target` ends.
pub fn monitor(target: Addr) void {
    sky_monitor(target);
}

/// Writes an info log line.
pub fn log(text: [:0]const u8) void {
    sky_log(text.ptr);
}

/// The wit name of a send error (`unknown-address`, ...).
pub fn sendErrorName(e: SendError) [:0]const u8 {
    return switch (e) {
        error.UnknownAddress => "unknown-address",
        error.Overloaded => "overloaded",
        error.TooLarge => "too-large",
        error.ReservedKind => "reserved-kind",
        error.NodeDown => "node-down",
    };
}

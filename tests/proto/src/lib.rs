//! The protocol of the `testkit` service.
//!
//! Host integration tests `call` a testkit service with a [`Command`] encoded
//! by postcard and decode its answer as a [`Reply`]. Postcard encodes enum
//! variants by their index, so the variant order here is part of the
//! protocol: add new variants at the end only.
//!
//! Addresses are raw `u32` (`(local_id << 8) | harbor_id`) so this crate
//! depends on serde alone.

use serde::{Deserialize, Serialize};

/// What a test asks a testkit service to do (the payload of a request).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Answer `Reply::Bytes` with the same bytes.
    Echo(#[serde(with = "serde_bytes")] Vec<u8>),
    /// Call `target` with `command` and answer with the target's `Reply`; a
    /// failed call answers `Reply::Failed` with the error's text.
    Call {
        /// The service to call.
        target: u32,
        /// What to ask it.
        command: Box<Command>,
    },
    /// Die in the given way; never answers.
    Trap(TrapKind),
    /// Spawn `module` with raw `args`; answer `Reply::Address` or `Reply::Failed`.
    Spawn {
        /// The module name (file stem of its `.wasm`).
        module: String,
        /// The raw `init` arguments.
        args: Vec<u8>,
    },
    /// Sleep `ms` on a host timer, then answer `Reply::Bytes(payload)`.
    SleepThenEcho {
        /// How long to sleep, in milliseconds.
        ms: u32,
        /// What to answer afterwards.
        payload: Vec<u8>,
    },
    /// Register this service under a name; answer `Reply::Unit` or `Reply::Failed`.
    Register(String),
    /// Look a name up; answer `Reply::MaybeAddress`.
    Query(String),
    /// Exit. With `answer`, reply `Reply::Unit` first; without, the caller
    /// gets the host's "exited" error.
    Exit {
        /// Whether to answer before exiting.
        answer: bool,
    },
    /// Start one timer per entry (ms); when all fired, answer `Reply::Order`
    /// with the entries' indices in firing order.
    Timers(Vec<u32>),
    /// Monitor an address; answer `Reply::Unit`.
    Monitor(u32),
    /// Answer `Reply::Addresses` with the sources of the exit notices
    /// received so far, in order.
    ExitNotices,
    /// Answer `Reply::Count` with the number of non-request messages
    /// received so far.
    Count,
    /// Call `target` `n` times in sequence with `Command::Echo(payload)`,
    /// checking each answer; answer `Reply::Unit` or `Reply::Failed`.
    CallLoop {
        /// The service to call (a testkit).
        target: u32,
        /// How many calls.
        n: u32,
        /// The payload to echo.
        payload: Vec<u8>,
    },
    /// Send `payload` (raw bytes, kind text) to `target` `n` times; answer
    /// `Reply::Unit` or `Reply::Failed` with the first error.
    SendLoop {
        /// The service to send to.
        target: u32,
        /// How many sends.
        n: u32,
        /// The raw payload of each send.
        payload: Vec<u8>,
    },
    /// Spawn `n` services of `module` concurrently (empty args); answer
    /// `Reply::Addresses` (in spawn order) or `Reply::Failed`.
    SpawnMany {
        /// The module name.
        module: String,
        /// How many services.
        n: u32,
    },
    /// Spin forever without yielding; never answers (for preemption tests).
    Spin,
    /// Register a global name for this service through the harbor master
    /// and wait for its answer. Answers `Unit` or `Failed`.
    GlobalName(String),
    /// Wait for a global name (at most `timeout_ms`, 0 = no limit).
    /// Answers `Address` or `Failed`.
    QueryName {
        /// The name.
        name: String,
        /// How long to wait.
        timeout_ms: u32,
    },
    /// This node's harbor id. Answers `Count`.
    HarborId,
    /// Wait for a harbor event: 0 = id connected, 1 = id disconnected,
    /// 2 = master link down. Answers `Unit` or `Failed`.
    HarborWait {
        /// Which event.
        what: u8,
        /// The harbor id it is about.
        id: u8,
    },
    /// `CallLoop`, timing each call with the host clock. Answers `Order`
    /// with each round trip in µs.
    CallLoopTimed {
        /// The testkit service called.
        target: u32,
        /// How many calls.
        n: u32,
        /// The payload echoed.
        payload: Vec<u8>,
    },
    /// Call `target` on cluster node `node` with `command` (0: no
    /// timeout). Answers what the remote testkit answered, or `Failed`.
    ClusterCall {
        /// The cluster node.
        node: String,
        /// The service there.
        target: ClusterTarget,
        /// What to ask it.
        command: Box<Command>,
        /// The call's own timeout.
        timeout_ms: u32,
    },
    /// Send `Echo(payload)` to `target` on `node` as text. Answers `Unit`
    /// or `Failed`.
    ClusterSend {
        /// The cluster node.
        node: String,
        /// The service there.
        target: ClusterTarget,
        /// The payload.
        payload: Vec<u8>,
    },
    /// A proxy for `target` on `node`. Answers `Address`.
    ClusterProxy {
        /// The cluster node.
        node: String,
        /// The service there.
        target: ClusterTarget,
    },
    /// Register this service in the cluster as `name`. Answers `Unit`.
    ClusterRegister(String),
    /// The address `node` registered as `name`. Answers `Address` or `Failed`.
    ClusterQuery {
        /// The cluster node.
        node: String,
        /// The name.
        name: String,
    },
    /// Replace the cluster config. Answers `Unit` or `Failed`.
    ClusterReload(String),
    /// `n` sequential cluster calls of `Echo(payload)`; `timed` answers
    /// `Order` with each round trip in µs, else `Unit`.
    ClusterCallLoop {
        /// The cluster node.
        node: String,
        /// The service there.
        target: ClusterTarget,
        /// How many calls.
        n: u32,
        /// The payload echoed.
        payload: Vec<u8>,
        /// Time each call.
        timed: bool,
    },
    /// `n` cluster sends of `payload` to `target` on `node`. Answers `Unit`.
    ClusterSendLoop {
        /// The cluster node.
        node: String,
        /// The service there.
        target: ClusterTarget,
        /// How many sends.
        n: u32,
        /// The payload.
        payload: Vec<u8>,
    },
    /// Make a multicast channel (with that number, or a free one).
    /// Answers `Count` with the channel id, or `Failed`.
    McNew(Option<u32>),
    /// Delete a channel. Answers `Unit` or `Failed`.
    McDelete(u32),
    /// Subscribe to a channel. Answers `Unit` or `Failed`.
    McSubscribe(u32),
    /// Unsubscribe from a channel. Answers `Unit`.
    McUnsubscribe(u32),
    /// Publish `n` messages whose payloads are the u32 `(tag << 16) | i`,
    /// little-endian, for i in 0..n. Answers `Unit` or `Failed`.
    McPublishSeq {
        /// The channel.
        channel: u32,
        /// The publisher's tag.
        tag: u16,
        /// How many.
        n: u32,
    },
    /// The multicast payloads received so far, as u32 (u32::MAX for a
    /// "channel gone" notice), in arrival order. Answers `Order`.
    McLog,
    /// The id this node uses for channel `channel` made on cluster node
    /// `node`. Answers `Count` or `Failed`.
    McCluster {
        /// The cluster node that made it.
        node: String,
        /// Its id there.
        channel: u32,
    },
    /// Publish `n` payloads of `size` bytes. Answers `Unit` or `Failed`.
    McPublishBig {
        /// The channel.
        channel: u32,
        /// How many.
        n: u32,
        /// Bytes in each.
        size: u32,
    },
    /// Kill a service; answers `Count(1)` if it was found, `Count(0)` if not.
    Kill(u32),
    /// Answers `Bytes` with the name of this service's tenant.
    Tenant,
    /// Read a file (WASI); answers `Bytes` or `Failed` with the error.
    ReadFile(String),
    /// Write (create or replace) a file; answers `Unit` or `Failed`.
    WriteFile {
        /// Its path.
        path: String,
        /// Its new contents.
        data: Vec<u8>,
    },
    /// Allocate `n` MiB, touch it and keep it; answers `Unit` (or the
    /// service is stopped at its memory limit).
    Hold(u32),
    /// Open a TCP connection to `host:port` and close it; answers `Unit`
    /// or `Failed` with the error.
    TcpConnect(String),
    /// An environment variable; answers `Bytes` (empty when unset).
    Env(String),
    /// Start a trace (`start_trace`) on this request; answers `Count`
    /// with the trace id (the answer itself carries it).
    StartTrace,
    /// Call `target` `n` times in sequence with the raw `payload` (for echo
    /// services in any language), checking each answer is the same bytes;
    /// answer `Reply::Unit` or `Reply::Failed`.
    RawCallLoop {
        /// The service to call (an echo).
        target: u32,
        /// How many calls.
        n: u32,
        /// The raw payload echoed.
        payload: Vec<u8>,
    },
    /// This service joins cluster group `group` (`policy`: 0 round robin,
    /// 1 consistent hash, 2 least pending). Answers `Unit` or `Failed`.
    GroupJoin {
        /// The group.
        group: String,
        /// Its policy.
        policy: u8,
    },
    /// This service leaves `group`. Answers `Unit`.
    GroupLeave(String),
    /// Call a member of `group` (picked with `key`) with `command`; answers
    /// the member's `Reply`, or `Failed` with the error's text.
    GroupCall {
        /// The group.
        group: String,
        /// The key consistent hashing picks by.
        key: Vec<u8>,
        /// What to ask the member.
        command: Box<Command>,
        /// 0: no timeout.
        timeout_ms: u32,
    },
    /// Answers `Bytes` with `<cluster node name>/<address>` of this service.
    WhoAmI,
    /// `n` sequential group calls of `Echo(payload)`, the i-th with key i
    /// (little-endian). Answers `Unit` or `Failed`.
    GroupCallLoop {
        /// The group.
        group: String,
        /// How many calls.
        n: u32,
        /// The payload echoed.
        payload: Vec<u8>,
    },
    /// `Call`, ended by the host after `timeout_ms` (`call-timeout`):
    /// answers what the target answered, or `Failed` with the error's text.
    CallWithin {
        /// The service to call.
        target: u32,
        /// What to ask it.
        command: Box<Command>,
        /// The host's limit on the call.
        timeout_ms: u32,
    },
    /// `n` sends of kind text through an `Outbox`, the i-th to
    /// `targets[i % len]` with payload `i` (u32, little-endian) then
    /// `payload`, flushed every `per_flush` sends and at the end. Answers
    /// `Unit`, or `Failed` with the first flush's error.
    SendLoopBatched {
        /// Where the sends go, in turn.
        targets: Vec<u32>,
        /// How many sends.
        n: u32,
        /// What follows each send's index.
        payload: Vec<u8>,
        /// Sends per flush (0 is taken as 1).
        per_flush: u32,
    },
    /// `RawCallLoop`, timing each call with the host clock: answers `Order`
    /// with each round trip in µs, or `Failed`.
    RawCallLoopTimed {
        /// The service to call (an echo).
        target: u32,
        /// How many calls.
        n: u32,
        /// The raw payload echoed.
        payload: Vec<u8>,
    },
    /// One call to each of `targets` with the raw `payload` (all started
    /// before any is awaited), each checked to come back the same: answers
    /// `Unit` or `Failed`.
    CallEach {
        /// The services to call (echoes).
        targets: Vec<u32>,
        /// The raw payload echoed.
        payload: Vec<u8>,
    },
    /// Answer `Reply::Count` with the 8 bytes at address 8 of the testkit's
    /// linear memory (set by its `low=<n>` init argument).
    Low,
    /// Send `n` empty texts to `target` (queued, as `send` does), then die
    /// in the given way; never answers.
    SendThenTrap {
        /// Where the texts go.
        target: u32,
        /// How many.
        n: u32,
        /// How it dies.
        trap: TrapKind,
    },
    /// `n` cluster sends to `target` on `node`, the i-th carrying
    /// [`SEQ_TAG`] and `i` (u32 little-endian), then a flush. Answers
    /// `Unit`, or `Failed` with what the flush was refused.
    ClusterSendSeq {
        /// The cluster node.
        node: String,
        /// The service there.
        target: ClusterTarget,
        /// How many sends.
        n: u32,
    },
    /// `n` sends (queued, as `send` does) of texts to `target`, the i-th
    /// carrying [`SEQ_TAG`] and `i` (u32 little-endian), then a flush.
    /// Answers `Unit`, or `Failed` with what the flush was refused.
    SendSeq {
        /// Where they go.
        target: u32,
        /// How many.
        n: u32,
    },
    /// The numbers of the [`SEQ_TAG`] texts received so far, in arrival
    /// order. Answers `Order`.
    SeqLog,
    /// Send an empty text to `to` once `count` non-request messages have
    /// been received (at once if they have). Answers `Unit`.
    NotifyAt {
        /// The count to wait for.
        count: u64,
        /// Who hears it.
        to: u32,
    },
    /// Call `target` with `command`; once the call has ended, answer
    /// `Order` with the numbers of the [`SEQ_TAG`] texts received by then
    /// (as `SeqLog`), or `Failed` if the call failed.
    CallThenSeqLog {
        /// The service to call.
        target: u32,
        /// What to ask it.
        command: Box<Command>,
    },
    /// `CallThenSeqLog` with several calls, one after the other, in one
    /// dispatch when each is answered inside the call.
    CallsThenSeqLog(Vec<(u32, Command)>),
    /// `CallLoop` with each call timed out after `timeout_ms` (as an
    /// Erlang `gen_server:call` is, after 5 s by default).
    CallLoopWithin {
        /// The testkit service called.
        target: u32,
        /// How many calls.
        n: u32,
        /// The payload echoed.
        payload: Vec<u8>,
        /// Each call's timeout, in milliseconds.
        timeout_ms: u32,
    },
}

/// What starts a numbered text (`SendSeq`, `ClusterSendSeq`, `SeqLog`).
pub const SEQ_TAG: [u8; 4] = *b"seq:";

/// A service on a cluster node: by name or by address there.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum ClusterTarget {
    /// A name the node resolves.
    Name(String),
    /// An address on that node.
    Address(u32),
}

/// How a testkit service dies for `Command::Trap`.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrapKind {
    /// Execute wasm `unreachable`.
    Unreachable,
    /// `panic!` (aborts: a trap on wasm32-wasip2).
    Panic,
    /// Read far beyond linear memory.
    OutOfBounds,
    /// Recurse until the stack is exhausted.
    StackOverflow,
    /// Allocate and touch 1 MiB blocks until memory runs out.
    AllocForever,
}

/// A testkit service's answer (the payload of its response).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// Done, nothing to report.
    Unit,
    /// Some bytes.
    Bytes(#[serde(with = "serde_bytes")] Vec<u8>),
    /// A service's address.
    Address(u32),
    /// A name lookup's result.
    MaybeAddress(Option<u32>),
    /// Indices in the order their events happened.
    Order(Vec<u32>),
    /// Several addresses.
    Addresses(Vec<u32>),
    /// A count.
    Count(u64),
    /// The command failed; the text says why.
    Failed(String),
}

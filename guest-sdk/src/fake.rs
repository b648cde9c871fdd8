//! A fake host for native unit tests: the same functions as the imports,
//! recording each effect in a thread-local instead of leaving the guest.

use std::cell::RefCell;
use std::collections::HashMap;

use crate::session::Completion;
use crate::sys::{CallStarted, LogLevel, RawBatchSendError, RawNameError, RawSendError};

/// Something the service asked of the host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Effect {
    Send {
        dest: u32,
        kind: u8,
        session: u32,
        payload: Vec<u8>,
    },
    Call {
        dest: u32,
        session: u32,
        payload: Vec<u8>,
    },
    /// A `call-timeout`: the call, and the host's limit on it.
    CallTimeout {
        dest: u32,
        session: u32,
        ms: u32,
    },
    Respond {
        dest: u32,
        session: u32,
        reply: Result<Vec<u8>, String>,
    },
    Timeout {
        session: u32,
        ms: u32,
    },
    Spawn {
        session: u32,
        module: String,
        args: Vec<u8>,
    },
    Exit,
    /// `stay-awake`: whether the instance must be kept.
    StayAwake(bool),
    Kill(u32),
    Monitor(u32),
    Demonitor(u32),
    /// A harbor request: what was asked, and its session.
    Harbor {
        session: u32,
        request: String,
    },
    /// A `cluster.send`: the node, the service (as debug text), the payload.
    ClusterSend {
        node: String,
        service: String,
        payload: Vec<u8>,
    },
    /// A `cluster.send-batch`: the node, the service, each payload.
    ClusterBatch {
        node: String,
        service: String,
        payloads: Vec<Vec<u8>>,
    },
}

/// The fake host's state for the current thread (one service per thread).
pub(crate) struct FakeHost {
    pub(crate) address: u32,
    pub(crate) next_session: u32,
    pub(crate) effects: Vec<Effect>,
    pub(crate) names: HashMap<String, u32>,
    pub(crate) logs: Vec<(LogLevel, String)>,
    /// Services that exist, for `call`/`send` (unknown addresses fail at once).
    pub(crate) known: Vec<u32>,
    /// What `now` answers (microseconds); tests move it.
    pub(crate) now: u64,
    /// Answers (kind, payload) the next `call-now`s get at once, in order,
    /// as a callee run inside the call would give them.
    pub(crate) answers_now: std::collections::VecDeque<(u8, Vec<u8>)>,
}

impl Default for FakeHost {
    fn default() -> Self {
        FakeHost {
            address: 0x100 | 1,
            next_session: 1,
            effects: Vec::new(),
            names: HashMap::new(),
            logs: Vec::new(),
            known: Vec::new(),
            now: 0,
            answers_now: Default::default(),
        }
    }
}

thread_local! {
    static HOST: RefCell<FakeHost> = RefCell::new(FakeHost::default());
}

/// Runs `f` with this thread's fake host.
pub(crate) fn host<R>(f: impl FnOnce(&mut FakeHost) -> R) -> R {
    HOST.with(|h| f(&mut h.borrow_mut()))
}

/// The effect of a `send` (or of one record of a `send-batch`).
pub(crate) fn sent(dest: u32, kind: u8, session: u32, payload: &[u8]) -> Effect {
    Effect::Send {
        dest,
        kind,
        session,
        payload: payload.to_vec(),
    }
}

/// Takes the effects recorded so far.
pub(crate) fn take_effects() -> Vec<Effect> {
    host(|h| std::mem::take(&mut h.effects))
}

fn record(effect: Effect) {
    // Drops that run while a test thread ends find no host; ignore them.
    let _ = HOST.try_with(|h| h.borrow_mut().effects.push(effect));
}

fn fresh_session(h: &mut FakeHost) -> u32 {
    let s = h.next_session;
    h.next_session += 1;
    s
}

fn check_dest(h: &FakeHost, dest: u32) -> Result<(), RawSendError> {
    if h.known.is_empty() || h.known.contains(&dest) {
        Ok(())
    } else {
        Err(RawSendError::UnknownAddress)
    }
}

pub(crate) fn self_address() -> u32 {
    host(|h| h.address)
}

pub(crate) fn tenant() -> String {
    "system".to_string()
}

pub(crate) fn start_trace() -> u64 {
    1
}

pub(crate) fn send(dest: u32, kind: u8, session: u32, payload: &[u8]) -> Result<(), RawSendError> {
    if crate::kind::is_reserved(kind) {
        return Err(RawSendError::ReservedKind);
    }
    host(|h| check_dest(h, dest))?;
    record(Effect::Send {
        dest,
        kind,
        session,
        payload: payload.to_vec(),
    });
    Ok(())
}

/// `send-batch`: each record sent as `send` would, stopping at the first
/// refused (the host's walk; a malformed buffer panics, as the host traps).
pub(crate) fn send_batch(batch: &[u8]) -> Result<(), RawBatchSendError> {
    let mut at = 0;
    let mut index = 0;
    while at < batch.len() {
        let word = |i: usize| {
            u32::from_le_bytes(
                batch[at + i..at + i + 4]
                    .try_into()
                    .expect("a whole record"),
            )
        };
        let len = word(12) as usize;
        let payload = &batch[at + 16..at + 16 + len];
        send(word(0), batch[at + 4], word(8), payload)
            .map_err(|error| RawBatchSendError { index, error })?;
        at += 16 + len;
        index += 1;
    }
    Ok(())
}

/// `call-now`: recorded as a `call` (and its limit, when it has one);
/// answered at once when a test queued an answer (`answers_now`).
pub(crate) fn call_now(dest: u32, payload: &[u8], ms: u32) -> Result<CallStarted, RawSendError> {
    let (session, answer) = host(|h| {
        check_dest(h, dest)?;
        Ok((fresh_session(h), h.answers_now.pop_front()))
    })?;
    record(Effect::Call {
        dest,
        session,
        payload: payload.to_vec(),
    });
    if ms > 0 && answer.is_none() {
        record(Effect::CallTimeout { dest, session, ms });
    }
    Ok(CallStarted {
        session,
        answer: answer.map(|(kind, payload)| Completion { kind, payload }),
    })
}

pub(crate) fn respond(
    dest: u32,
    session: u32,
    reply: Result<&[u8], &str>,
) -> Result<(), RawSendError> {
    let reply = reply.map(<[u8]>::to_vec).map_err(str::to_owned);
    record(Effect::Respond {
        dest,
        session,
        reply,
    });
    Ok(())
}

pub(crate) fn new_session() -> u32 {
    host(fresh_session)
}

pub(crate) fn register(name: &str) -> Result<(), RawNameError> {
    host(|h| {
        if name.is_empty() {
            return Err(RawNameError::Invalid);
        }
        if h.names.contains_key(name) {
            return Err(RawNameError::Taken);
        }
        let address = h.address;
        h.names.insert(name.to_owned(), address);
        Ok(())
    })
}

pub(crate) fn unregister(name: &str) {
    host(|h| h.names.remove(name));
}

pub(crate) fn query(name: &str) -> Option<u32> {
    host(|h| h.names.get(name).copied())
}

pub(crate) fn spawn(module: &str, args: &[u8]) -> u32 {
    let session = host(fresh_session);
    record(Effect::Spawn {
        session,
        module: module.to_owned(),
        args: args.to_vec(),
    });
    session
}

pub(crate) fn exit() {
    record(Effect::Exit);
}

pub(crate) fn stay_awake(on: bool) {
    record(Effect::StayAwake(on));
}

pub(crate) fn kill(target: u32) -> bool {
    record(Effect::Kill(target));
    true
}

pub(crate) fn timeout(ms: u32) -> u32 {
    let session = host(fresh_session);
    record(Effect::Timeout { session, ms });
    session
}

pub(crate) fn monitor(target: u32) {
    record(Effect::Monitor(target));
}

pub(crate) fn demonitor(target: u32) {
    record(Effect::Demonitor(target));
}

pub(crate) fn now() -> u64 {
    host(|h| h.now)
}

pub(crate) fn wall_time() -> u64 {
    0
}

pub(crate) fn log(level: LogLevel, message: &str) {
    let _ = HOST.try_with(|h| h.borrow_mut().logs.push((level, message.to_owned())));
}

/// The fake `harbor` interface: each request records its session.
pub(crate) mod harbor {
    use super::{Effect, fresh_session, host, record};

    fn ask(request: String) -> u32 {
        let session = host(fresh_session);
        record(Effect::Harbor { session, request });
        session
    }

    pub(crate) fn id() -> u8 {
        host(|h| (h.address & 0xff) as u8)
    }

    pub(crate) fn globalname(name: &str, target: u32) -> u32 {
        ask(format!("globalname {name} {target}"))
    }

    pub(crate) fn queryname(name: &str, timeout_ms: u32) -> u32 {
        ask(format!("queryname {name} {timeout_ms}"))
    }

    pub(crate) fn connect(id: u8) -> u32 {
        ask(format!("connect {id}"))
    }

    pub(crate) fn link(id: u8) -> u32 {
        ask(format!("link {id}"))
    }

    pub(crate) fn linkmaster() -> u32 {
        ask("linkmaster".to_string())
    }
}

/// The fake `cluster` interface: requests record their session.
pub(crate) mod cluster {
    use super::{Effect, fresh_session, host, record};

    pub(crate) use crate::bindings::skyhost::service::cluster::{BatchRefused, Service};

    fn ask(request: String) -> u32 {
        let session = host(fresh_session);
        record(Effect::Harbor { session, request });
        session
    }

    pub(crate) fn node_name() -> String {
        "fake".to_string()
    }

    pub(crate) fn open(at: &str) -> Result<String, String> {
        Ok(at.to_string())
    }

    pub(crate) fn call(node: &str, service: &Service, payload: &[u8], timeout_ms: u32) -> u32 {
        ask(format!(
            "cluster call {node} {service:?} {} {timeout_ms}",
            payload.len()
        ))
    }

    /// The node the fake refuses every send to.
    pub(crate) const DOWN: &str = "down";

    pub(crate) fn send(node: &str, service: &Service, payload: &[u8]) -> Result<(), String> {
        if node == DOWN {
            return Err(format!("cluster node `{node}` is offline"));
        }
        record(Effect::ClusterSend {
            node: node.to_string(),
            service: format!("{service:?}"),
            payload: payload.to_vec(),
        });
        Ok(())
    }

    pub(crate) fn send_batch(
        node: &str,
        service: &Service,
        batch: &[u8],
    ) -> Result<(), BatchRefused> {
        let mut payloads = Vec::new();
        let mut rest = batch;
        while !rest.is_empty() {
            let len = u32::from_le_bytes(rest[..4].try_into().expect("a whole record")) as usize;
            payloads.push(rest[4..4 + len].to_vec());
            rest = &rest[4 + len..];
        }
        if node == DOWN {
            return Err(BatchRefused {
                count: u32::try_from(payloads.len()).expect("a small batch"),
                reason: format!("cluster node `{node}` is offline"),
            });
        }
        record(Effect::ClusterBatch {
            node: node.to_string(),
            service: format!("{service:?}"),
            payloads,
        });
        Ok(())
    }

    pub(crate) fn proxy(_node: &str, _service: &Service) -> u32 {
        0x200
    }

    pub(crate) fn register(_name: &str, _target: u32) {}

    pub(crate) fn unregister(_name: &str) {}

    pub(crate) fn query(node: &str, name: &str) -> u32 {
        ask(format!("cluster query {node} {name}"))
    }

    pub(crate) fn reload(_config: &str) -> Result<(), String> {
        Ok(())
    }
}

/// The fake `multicast` interface: channels numbered from 1, nothing sent.
pub(crate) mod multicast {
    pub(crate) use crate::bindings::skyhost::service::multicast::ChannelError;

    pub(crate) fn new(number: Option<u32>) -> Result<u32, ChannelError> {
        Ok(number.unwrap_or(1) << 8)
    }

    pub(crate) fn delete(_channel: u32) -> Result<(), ChannelError> {
        Ok(())
    }

    pub(crate) fn publish(_channel: u32, _payload: &[u8]) -> Result<(), ChannelError> {
        Ok(())
    }

    pub(crate) fn subscribe(_channel: u32) -> Result<(), ChannelError> {
        Ok(())
    }

    pub(crate) fn unsubscribe(_channel: u32) {}

    pub(crate) fn cluster_channel(_node: &str, channel: u32) -> Result<u32, ChannelError> {
        Ok(channel)
    }
}

/// The fake `groups` interface: no members; calls start a session.
pub(crate) mod groups {
    pub(crate) use crate::bindings::skyhost::service::groups::{Member, Policy};

    use super::{Effect, fresh_session, host, record};

    fn ask(request: String) -> u32 {
        let session = host(fresh_session);
        record(Effect::Harbor { session, request });
        session
    }

    pub(crate) fn join(_group: &str, _member: u32, _policy: Policy) -> Result<(), String> {
        Ok(())
    }

    pub(crate) fn leave(_group: &str, _member: u32) {}

    pub(crate) fn members(_group: &str) -> Vec<Member> {
        Vec::new()
    }

    pub(crate) fn call(group: &str, key: &[u8], payload: &[u8], timeout_ms: u32) -> u32 {
        ask(format!(
            "group call {group} {} {} {timeout_ms}",
            key.len(),
            payload.len()
        ))
    }
}

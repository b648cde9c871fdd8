//! `testkit`: does what host integration tests ask.
//!
//! Requests carry a [`Command`] (postcard); answers are a [`Answer`]
//! (`skyhost_test_proto::Reply`). Text and other non-request messages are
//! counted, and exit notices remembered, for `Count` and `ExitNotices`.

use std::cell::{Cell, RefCell};
use std::hint::black_box;
use std::rc::Rc;
use std::time::Duration;

use skyhost_sdk::{
    Address, Incoming, Message, Outbox, Reply, Service, call, call_timeout, cluster, exit,
    export_service, flush,
    group::{self, Policy},
    harbor, kind, monitor,
    multicast::Channel,
    query, register, self_address, send_raw, sleep, spawn_raw,
};
use skyhost_test_proto::{ClusterTarget, Command, Reply as Answer, SEQ_TAG, TrapKind};

/// The 8 bytes at address 8 of the linear memory (`low=<n>`, `Command::Low`).
const LOW: *mut u64 = core::ptr::without_provenance_mut(8);

/// Counters the commands read back.
struct Testkit {
    /// Non-request messages received so far.
    counted: Cell<u64>,
    /// Sources of the exit notices received so far, in order.
    exits: RefCell<Vec<u32>>,
    /// Multicast payloads received (u32 little-endian; u32::MAX: channel gone).
    multicast: RefCell<Vec<u32>>,
    /// Memory kept for `Hold`.
    held: RefCell<Vec<Vec<u8>>>,
    /// The numbers of the `SEQ_TAG` texts received, in order.
    seq: RefCell<Vec<u32>>,
    /// Who hears when the count reaches what (`NotifyAt`).
    notify: Cell<Option<(u64, u32)>>,
}

impl Service for Testkit {
    fn init(args: Vec<u8>) -> Result<Self, String> {
        // `name=<n>` registers a name at start (global on a harbor node
        // when it has no leading dot), so tests can find services that a
        // node file started.
        let args = String::from_utf8_lossy(&args);
        for word in args.split_whitespace() {
            if let Some(name) = word.strip_prefix("name=") {
                register(name).map_err(|e| format!("register {name}: {e}"))?;
            }
            if let Some(name) = word.strip_prefix("cluster=") {
                cluster::register(name, self_address());
            }
            if let Some(name) = word.strip_prefix("group=") {
                group::join(name, self_address(), Policy::RoundRobin)
                    .map_err(|e| format!("join {name}: {e}"))?;
            }
            if let Some(n) = word.strip_prefix("mc_new=") {
                let n: u32 = n.parse().map_err(|e| format!("mc_new: {e}"))?;
                Channel::with_number(n).map_err(|e| format!("mc_new: {e:?}"))?;
            }
            if let Some(id) = word.strip_prefix("mc_sub=") {
                let id: u32 = id.parse().map_err(|e| format!("mc_sub: {e}"))?;
                Channel(id)
                    .subscribe()
                    .map_err(|e| format!("mc_sub: {e:?}"))?;
            }
            if let Some(n) = word.strip_prefix("low=") {
                let n: u64 = n.parse().map_err(|e| format!("low: {e}"))?;
                // SAFETY: address 8 of a wasm32 linear memory is always
                // there, and nothing of Rust's lives that low (its data
                // and stack start at 1 MiB): a test can see whether a
                // memory image taken from this serving instance left these
                // bytes as they were (`globals-out` writes over them).
                unsafe { LOW.write_volatile(n) };
            }
            if let Some(spec) = word.strip_prefix("mc_join=") {
                // node:id — subscribe to a channel made on a cluster node.
                let (node, id) = spec.split_once(':').ok_or("mc_join=node:id")?;
                let id: u32 = id.parse().map_err(|e| format!("mc_join: {e}"))?;
                let channel = Channel::cluster(node, id).map_err(|e| format!("mc_join: {e:?}"))?;
                channel.subscribe().map_err(|e| format!("mc_join: {e:?}"))?;
            }
        }
        Ok(Testkit {
            counted: Cell::new(0),
            exits: RefCell::new(Vec::new()),
            multicast: RefCell::new(Vec::new()),
            held: RefCell::new(Vec::new()),
            seq: RefCell::new(Vec::new()),
            notify: Cell::new(None),
        })
    }

    /// One-way messages and echoes need no waiting: they take no task.
    fn handle_now(&self, msg: &Incoming<'_>) -> Option<Reply> {
        if !msg.is_request() {
            self.note(msg.kind, msg.source, msg.payload);
            return Some(Reply::none());
        }
        match msg.decode::<Command>() {
            Ok(Command::Echo(bytes)) => Some(Reply::value(&Answer::Bytes(bytes))),
            _ => None,
        }
    }

    async fn handle(self: Rc<Self>, mut msg: Message) -> Reply {
        if !msg.is_request() {
            self.note(msg.kind, msg.source, &msg.payload);
            return Reply::none();
        }
        let command: Command = match msg.decode() {
            Ok(command) => command,
            Err(e) => return Reply::error(format!("testkit: bad command: {e}")),
        };
        match command {
            Command::Exit { answer } => {
                if answer && let Some(responder) = msg.take_responder() {
                    // The caller may be gone; we exit either way.
                    let _ = responder.ok(&Answer::Unit);
                }
                // Without an answer the host tells the caller we exited.
                exit();
                Reply::none()
            }
            Command::Timers(delays) => {
                match msg.take_responder() {
                    Some(responder) => start_timers(&delays, responder),
                    None => return Reply::error("testkit: Timers needs a request"),
                }
                Reply::none()
            }
            command => Reply::value(&run(&self, command).await),
        }
    }
}

impl Testkit {
    /// Counts a one-way message, and logs exits and publishes.
    fn note(&self, kind: u8, source: Address, payload: &[u8]) {
        self.counted.set(self.counted.get() + 1);
        if let Some((count, to)) = self.notify.get()
            && self.counted.get() >= count
        {
            self.notify.set(None);
            let _ = send_raw(Address(to), kind::TEXT, &[]);
        }
        if kind == kind::EXIT {
            self.exits.borrow_mut().push(source.0);
        }
        if kind == kind::TEXT
            && let Some(number) = payload.strip_prefix(&SEQ_TAG)
            && let Ok(number) = <[u8; 4]>::try_from(number)
        {
            self.seq.borrow_mut().push(u32::from_le_bytes(number));
        }
        if kind == kind::MULTICAST {
            let value = match <[u8; 4]>::try_from(payload) {
                _ if source.0 == 0 => u32::MAX,
                Ok(bytes) => u32::from_le_bytes(bytes),
                Err(_) => u32::MAX - 1,
            };
            self.multicast.borrow_mut().push(value);
        }
    }
}

/// Sends `n` numbered texts (`SEQ_TAG`, then `i`) with `send`, then
/// flushes: `Unit`, or what was refused, at once or at the flush.
fn send_numbered(n: u32, send: impl Fn(&[u8]) -> Result<(), String>) -> Answer {
    for i in 0..n {
        let mut payload = SEQ_TAG.to_vec();
        payload.extend_from_slice(&i.to_le_bytes());
        if let Err(e) = send(&payload) {
            return Answer::Failed(format!("send {i} of {n}: {e}"));
        }
    }
    match flush() {
        Ok(()) => Answer::Unit,
        Err(e) => Answer::Failed(format!("{n} sends: {e}")),
    }
}

/// Runs a command that answers when it returns.
async fn run(kit: &Testkit, command: Command) -> Answer {
    match command {
        Command::Echo(bytes) => Answer::Bytes(bytes),
        Command::Call { target, command } => {
            match call::<Command, Answer>(Address(target), &*command).await {
                Ok(answer) => answer,
                Err(e) => Answer::Failed(e.to_string()),
            }
        }
        Command::CallWithin {
            target,
            command,
            timeout_ms,
        } => {
            let within = Duration::from_millis(timeout_ms.into());
            match call_timeout::<Command, Answer>(Address(target), &*command, within).await {
                Ok(answer) => answer,
                Err(e) => Answer::Failed(e.to_string()),
            }
        }
        Command::Trap(how) => trap(how),
        Command::SendThenTrap {
            target,
            n,
            trap: how,
        } => {
            for i in 0..n {
                if let Err(e) = send_raw(Address(target), kind::TEXT, &[]) {
                    return Answer::Failed(format!("send {i} of {n}: {e}"));
                }
            }
            trap(how)
        }
        Command::Spawn { module, args } => match spawn_raw(&module, &args).await {
            Ok(address) => Answer::Address(address.0),
            Err(e) => Answer::Failed(e.to_string()),
        },
        Command::SleepThenEcho { ms, payload } => {
            sleep(Duration::from_millis(ms.into())).await;
            Answer::Bytes(payload)
        }
        Command::Register(name) => match register(&name) {
            Ok(()) => Answer::Unit,
            Err(e) => Answer::Failed(format!("register {name}: {e}")),
        },
        Command::Query(name) => Answer::MaybeAddress(query(&name).map(|a| a.0)),
        Command::Monitor(target) => {
            monitor(Address(target));
            Answer::Unit
        }
        Command::ExitNotices => Answer::Addresses(kit.exits.borrow().clone()),
        Command::Count => Answer::Count(kit.counted.get()),
        Command::NotifyAt { count, to } => {
            if kit.counted.get() >= count {
                if let Err(e) = send_raw(Address(to), kind::TEXT, &[]) {
                    return Answer::Failed(format!("notify {}: {e}", Address(to)));
                }
            } else {
                kit.notify.set(Some((count, to)));
            }
            Answer::Unit
        }
        Command::CallLoop { target, n, payload } => {
            call_loop(Address(target), n, payload, false, None).await
        }
        Command::CallLoopTimed { target, n, payload } => {
            call_loop(Address(target), n, payload, true, None).await
        }
        Command::CallLoopWithin {
            target,
            n,
            payload,
            timeout_ms,
        } => {
            let within = Duration::from_millis(timeout_ms.into());
            call_loop(Address(target), n, payload, false, Some(within)).await
        }
        Command::SendLoop { target, n, payload } => {
            for i in 0..n {
                if let Err(e) = send_raw(Address(target), kind::TEXT, &payload) {
                    return Answer::Failed(format!("send {i} of {n}: {e}"));
                }
            }
            // What the host refuses it refuses at the flush.
            match flush() {
                Ok(()) => Answer::Unit,
                Err(refused) => Answer::Failed(format!("{n} sends: {refused}")),
            }
        }
        Command::SendLoopBatched {
            targets,
            n,
            payload,
            per_flush,
        } => send_loop_batched(&targets, n, &payload, per_flush),
        Command::SpawnMany { module, n } => {
            // Every spawn starts here, before the first await: they run
            // concurrently on the host and are collected in spawn order.
            let spawns: Vec<_> = (0..n).map(|_| spawn_raw(&module, &[])).collect();
            let mut addresses = Vec::with_capacity(spawns.len());
            for (i, spawn) in spawns.into_iter().enumerate() {
                match spawn.await {
                    Ok(address) => addresses.push(address.0),
                    Err(e) => return Answer::Failed(format!("spawn {i} of {n}: {e}")),
                }
            }
            Answer::Addresses(addresses)
        }
        Command::CallEach { targets, payload } => {
            let calls: Vec<_> = targets
                .iter()
                .map(|&a| skyhost_sdk::call_raw(Address(a), &payload))
                .collect();
            let n = calls.len();
            for (i, call) in calls.into_iter().enumerate() {
                match call.await {
                    Ok(bytes) if bytes == payload => {}
                    Ok(_) => return Answer::Failed(format!("call {i} of {n}: other bytes")),
                    Err(e) => return Answer::Failed(format!("call {i} of {n}: {e}")),
                }
            }
            Answer::Unit
        }
        Command::Spin => spin(),
        Command::GlobalName(name) => match harbor::globalname(&name, self_address()).await {
            Ok(()) => Answer::Unit,
            Err(e) => Answer::Failed(format!("globalname {name}: {e}")),
        },
        Command::QueryName { name, timeout_ms } => {
            let timeout = (timeout_ms > 0).then(|| Duration::from_millis(timeout_ms.into()));
            match harbor::queryname(&name, timeout).await {
                Ok(address) => Answer::Address(address.0),
                Err(e) => Answer::Failed(format!("queryname {name}: {e}")),
            }
        }
        Command::HarborId => Answer::Count(harbor::id().into()),
        Command::HarborWait { what, id } => {
            let done = match what {
                0 => harbor::connect(id).await,
                1 => harbor::link(id).await,
                _ => harbor::linkmaster().await,
            };
            match done {
                Ok(()) => Answer::Unit,
                Err(e) => Answer::Failed(format!("harbor wait {what} {id}: {e}")),
            }
        }
        Command::ClusterCall {
            node,
            target,
            command,
            timeout_ms,
        } => {
            let what = format!("cluster call {node}");
            forward(&command, &what, |payload| {
                cluster::call_raw(&node, service(target), &payload, timeout_of(timeout_ms))
            })
            .await
        }
        Command::ClusterSend {
            node,
            target,
            payload,
        } => {
            // Queued: what the host refuses it refuses at the flush.
            let sent = cluster::send_raw(&node, service(target), &payload)
                .and_then(|()| flush().map_err(|e| e.to_string()));
            match sent {
                Ok(()) => Answer::Unit,
                Err(e) => Answer::Failed(format!("cluster send {node}: {e}")),
            }
        }
        Command::ClusterProxy { node, target } => {
            Answer::Address(cluster::proxy(&node, service(target)).0)
        }
        Command::ClusterRegister(name) => {
            cluster::register(&name, self_address());
            Answer::Unit
        }
        Command::ClusterQuery { node, name } => match cluster::query(&node, &name).await {
            Ok(a) => Answer::Address(a.0),
            Err(e) => Answer::Failed(format!("cluster query {node} {name}: {e}")),
        },
        Command::ClusterReload(text) => match cluster::reload(&text) {
            Ok(()) => Answer::Unit,
            Err(e) => Answer::Failed(format!("cluster reload: {e}")),
        },
        Command::ClusterCallLoop {
            node,
            target,
            n,
            payload,
            timed,
        } => cluster_call_loop(&node, service(target), n, payload, timed).await,
        Command::ClusterSendLoop {
            node,
            target,
            n,
            payload,
        } => {
            let target = service(target);
            for i in 0..n {
                if let Err(e) = cluster::send_raw(&node, target.clone(), &payload) {
                    return Answer::Failed(format!("cluster send {i} of {n}: {e}"));
                }
            }
            match flush() {
                Ok(()) => Answer::Unit,
                Err(e) => Answer::Failed(format!("cluster sends to {node}: {e}")),
            }
        }
        Command::McNew(number) => {
            let made = match number {
                Some(n) => Channel::with_number(n),
                None => Channel::new(),
            };
            match made {
                Ok(c) => Answer::Count(c.0.into()),
                Err(e) => Answer::Failed(format!("multicast new: {e:?}")),
            }
        }
        Command::McDelete(c) => match Channel(c).delete() {
            Ok(()) => Answer::Unit,
            Err(e) => Answer::Failed(format!("multicast delete: {e:?}")),
        },
        Command::McSubscribe(c) => match Channel(c).subscribe() {
            Ok(()) => Answer::Unit,
            Err(e) => Answer::Failed(format!("multicast subscribe: {e:?}")),
        },
        Command::McUnsubscribe(c) => {
            Channel(c).unsubscribe();
            Answer::Unit
        }
        Command::McPublishSeq { channel, tag, n } => {
            for i in 0..n {
                let value = (u32::from(tag) << 16) | (i & 0xffff);
                if let Err(e) = Channel(channel).publish_raw(&value.to_le_bytes()) {
                    return Answer::Failed(format!("multicast publish {i} of {n}: {e:?}"));
                }
            }
            Answer::Unit
        }
        Command::McLog => Answer::Order(kit.multicast.borrow().clone()),
        Command::ClusterSendSeq { node, target, n } => {
            let target = service(target);
            send_numbered(n, |payload| {
                cluster::send_raw(&node, target.clone(), payload)
            })
        }
        Command::SendSeq { target, n } => send_numbered(n, |payload| {
            send_raw(Address(target), kind::TEXT, payload).map_err(|e| e.to_string())
        }),
        Command::SeqLog => Answer::Order(kit.seq.borrow().clone()),
        Command::CallThenSeqLog { target, command } => {
            match call::<Command, Answer>(Address(target), &*command).await {
                Ok(_) => Answer::Order(kit.seq.borrow().clone()),
                Err(e) => Answer::Failed(e.to_string()),
            }
        }
        Command::CallsThenSeqLog(calls) => {
            for (target, command) in &calls {
                if let Err(e) = call::<Command, Answer>(Address(*target), command).await {
                    return Answer::Failed(format!("call to {}: {e}", Address(*target)));
                }
            }
            Answer::Order(kit.seq.borrow().clone())
        }
        Command::McPublishBig { channel, n, size } => {
            let payload = vec![7u8; size as usize];
            for i in 0..n {
                if let Err(e) = Channel(channel).publish_raw(&payload) {
                    return Answer::Failed(format!("multicast publish {i} of {n}: {e:?}"));
                }
            }
            Answer::Unit
        }
        Command::McCluster { node, channel } => match Channel::cluster(&node, channel) {
            Ok(c) => Answer::Count(c.0.into()),
            Err(e) => Answer::Failed(format!("multicast cluster channel: {e:?}")),
        },
        Command::Kill(target) => Answer::Count(u64::from(skyhost_sdk::kill(Address(target)))),
        Command::Tenant => Answer::Bytes(skyhost_sdk::tenant().into_bytes()),
        Command::StartTrace => Answer::Count(skyhost_sdk::start_trace()),
        Command::RawCallLoop { target, n, payload } => {
            match raw_call_loop(Address(target), n, &payload, false).await {
                Ok(_) => Answer::Unit,
                Err(e) => Answer::Failed(e),
            }
        }
        Command::RawCallLoopTimed { target, n, payload } => {
            match raw_call_loop(Address(target), n, &payload, true).await {
                Ok(times) => Answer::Order(times),
                Err(e) => Answer::Failed(e),
            }
        }
        Command::GroupJoin {
            group: name,
            policy,
        } => {
            let policy = match policy {
                0 => Policy::RoundRobin,
                1 => Policy::ConsistentHash,
                _ => Policy::LeastPending,
            };
            match group::join(&name, self_address(), policy) {
                Ok(()) => Answer::Unit,
                Err(e) => Answer::Failed(format!("join {name}: {e}")),
            }
        }
        Command::GroupLeave(name) => {
            group::leave(&name, self_address());
            Answer::Unit
        }
        Command::GroupCall {
            group: name,
            key,
            command,
            timeout_ms,
        } => {
            let what = format!("group call {name}");
            forward(&command, &what, |payload| {
                group::call_raw(&name, &key, &payload, timeout_of(timeout_ms))
            })
            .await
        }
        // SAFETY: see `LOW`.
        Command::Low => Answer::Count(unsafe { LOW.read_volatile() }),
        Command::WhoAmI => {
            Answer::Bytes(format!("{}/{}", cluster::node_name(), self_address().0).into_bytes())
        }
        Command::GroupCallLoop {
            group: name,
            n,
            payload,
        } => {
            let echo = match postcard::to_allocvec(&Command::Echo(payload)) {
                Ok(p) => p,
                Err(e) => return Answer::Failed(format!("encode: {e}")),
            };
            for i in 0..n {
                if let Err(e) = group::call_raw(&name, &i.to_le_bytes(), &echo, None).await {
                    return Answer::Failed(format!("group call {i} of {n}: {e}"));
                }
            }
            Answer::Unit
        }
        Command::ReadFile(path) => match std::fs::read(&path) {
            Ok(bytes) => Answer::Bytes(bytes),
            Err(e) => Answer::Failed(format!("read {path}: {e}")),
        },
        Command::WriteFile { path, data } => match std::fs::write(&path, data) {
            Ok(()) => Answer::Unit,
            Err(e) => Answer::Failed(format!("write {path}: {e}")),
        },
        Command::Hold(mib) => {
            let block = vec![1u8; (mib as usize) << 20];
            kit.held.borrow_mut().push(black_box(block));
            Answer::Unit
        }
        Command::TcpConnect(to) => match std::net::TcpStream::connect(&to) {
            Ok(_) => Answer::Unit,
            Err(e) => Answer::Failed(format!("connect {to}: {e}")),
        },
        Command::Env(key) => Answer::Bytes(std::env::var(&key).unwrap_or_default().into_bytes()),
        Command::Exit { .. } | Command::Timers(_) => {
            Answer::Failed("testkit: handled before run".into())
        }
    }
}

fn service(target: ClusterTarget) -> cluster::Service {
    match target {
        ClusterTarget::Name(n) => cluster::Service::Name(n),
        ClusterTarget::Address(a) => cluster::Service::Address(Address(a)),
    }
}

/// `n` sequential cluster calls of `Echo(payload)`, each answer checked;
/// `timed` answers each round trip in µs.
async fn cluster_call_loop(
    node: &str,
    target: cluster::Service,
    n: u32,
    payload: Vec<u8>,
    timed: bool,
) -> Answer {
    let command = Command::Echo(payload.clone());
    let mut times = Vec::new();
    for i in 0..n {
        let start = timed.then(skyhost_sdk::now);
        match cluster::call::<Command, Answer>(node, target.clone(), &command).await {
            Ok(Answer::Bytes(bytes)) if bytes == payload => {}
            Ok(other) => return Answer::Failed(format!("call {i} of {n}: answered {other:?}")),
            Err(e) => return Answer::Failed(format!("call {i} of {n}: {e}")),
        }
        if let Some(start) = start {
            let micros = (skyhost_sdk::now() - start).as_micros();
            times.push(u32::try_from(micros).unwrap_or(u32::MAX));
        }
    }
    if timed {
        Answer::Order(times)
    } else {
        Answer::Unit
    }
}

/// `n` sequential calls of `Echo(payload)`, each answer checked; `timed`
/// answers each round trip in µs.
async fn call_loop(
    target: Address,
    n: u32,
    payload: Vec<u8>,
    timed: bool,
    within: Option<Duration>,
) -> Answer {
    let command = Command::Echo(payload);
    let Command::Echo(expected) = &command else {
        unreachable!("built just above")
    };
    let mut times = Vec::with_capacity(if timed { n as usize } else { 0 });
    for i in 0..n {
        let start = timed.then(skyhost_sdk::now);
        let answer = match within {
            Some(within) => call_timeout::<Command, Answer>(target, &command, within).await,
            None => call::<Command, Answer>(target, &command).await,
        };
        match answer {
            Ok(Answer::Bytes(bytes)) if bytes == *expected => {}
            Ok(other) => return Answer::Failed(format!("call {i} of {n}: answered {other:?}")),
            Err(e) => return Answer::Failed(format!("call {i} of {n}: {e}")),
        }
        if let Some(start) = start {
            let micros = (skyhost_sdk::now() - start).as_micros();
            times.push(u32::try_from(micros).unwrap_or(u32::MAX));
        }
    }
    if timed {
        Answer::Order(times)
    } else {
        Answer::Unit
    }
}

/// One forked task per timer; the last to fire answers with the order.
fn start_timers(delays: &[u32], responder: skyhost_sdk::Responder) {
    let total = delays.len();
    if total == 0 {
        let _ = responder.ok(&Answer::Order(Vec::new()));
        return;
    }
    let state = Rc::new(RefCell::new((Vec::with_capacity(total), Some(responder))));
    for (index, &ms) in (0u32..).zip(delays) {
        // The timer starts now, so all timers start in index order.
        let timer = sleep(Duration::from_millis(ms.into()));
        let state = Rc::clone(&state);
        skyhost_sdk::fork(async move {
            timer.await;
            let mut state = state.borrow_mut();
            state.0.push(index);
            if state.0.len() == total
                && let Some(responder) = state.1.take()
            {
                let _ = responder.ok(&Answer::Order(state.0.clone()));
            }
        });
    }
}

/// Dies the way `how` says; never returns.
fn trap(how: TrapKind) -> ! {
    match how {
        TrapKind::Unreachable => unreachable_instruction(),
        TrapKind::Panic => panic!("testkit: asked to panic"),
        TrapKind::OutOfBounds => {
            let address = black_box(0xFFFF_FFF0_usize) as *const u64;
            // SAFETY: this is NOT a valid read and is meant to trap: on
            // wasm32 the 8 bytes at 0xFFFF_FFF0 end past 4 GiB, beyond any
            // linear memory, so the load traps before a value exists.
            let value = unsafe { std::ptr::read_volatile(address) };
            panic!("testkit: out-of-bounds read returned {value}")
        }
        TrapKind::StackOverflow => {
            let depth = recurse(black_box(0));
            panic!("testkit: recursion ended at {depth}")
        }
        TrapKind::AllocForever => {
            let mut kept: Vec<Vec<u8>> = Vec::new();
            loop {
                let mut block = vec![0u8; 1 << 20];
                for byte in block.iter_mut().step_by(4096) {
                    *byte = 1;
                }
                kept.push(black_box(block));
            }
        }
    }
}

#[cfg(target_arch = "wasm32")]
fn unreachable_instruction() -> ! {
    core::arch::wasm32::unreachable()
}

#[cfg(not(target_arch = "wasm32"))]
fn unreachable_instruction() -> ! {
    std::process::abort()
}

/// Non-tail recursion with a frame the optimizer must keep.
#[inline(never)]
fn recurse(depth: u64) -> u64 {
    let frame = black_box([depth; 32]);
    if black_box(depth) == u64::MAX {
        return frame[0];
    }
    recurse(depth + 1).wrapping_add(frame[7])
}

/// Spins forever without yielding to the host.
fn spin() -> ! {
    let mut n = 0u64;
    loop {
        n = black_box(n.wrapping_add(1));
    }
}

/// A timeout in ms, 0 meaning none.
fn timeout_of(ms: u32) -> Option<Duration> {
    (ms > 0).then(|| Duration::from_millis(ms.into()))
}

/// Sends `command` (postcard) through `call` and answers with the reply it
/// brings back, or with what went wrong (`what` names the call).
async fn forward<Fut>(command: &Command, what: &str, call: impl FnOnce(Vec<u8>) -> Fut) -> Answer
where
    Fut: Future<Output = Result<Vec<u8>, skyhost_sdk::CallError>>,
{
    let payload = match postcard::to_allocvec(command) {
        Ok(p) => p,
        Err(e) => return Answer::Failed(format!("encode: {e}")),
    };
    match call(payload).await {
        Ok(bytes) => {
            postcard::from_bytes(&bytes).unwrap_or_else(|e| Answer::Failed(format!("decode: {e}")))
        }
        Err(e) => Answer::Failed(format!("{what}: {e}")),
    }
}

export_service!(Testkit);

/// `Command::SendLoopBatched`.
fn send_loop_batched(targets: &[u32], n: u32, payload: &[u8], per_flush: u32) -> Answer {
    if targets.is_empty() {
        return Answer::Failed("no targets".into());
    }
    let mut outbox = Outbox::new();
    let mut message = Vec::with_capacity(4 + payload.len());
    for i in 0..n {
        message.clear();
        message.extend_from_slice(&i.to_le_bytes());
        message.extend_from_slice(payload);
        let target = targets[i as usize % targets.len()];
        outbox.push_raw(Address(target), kind::TEXT, &message);
        if (outbox.len() as u32 >= per_flush || i + 1 == n)
            && let Err(e) = outbox.flush()
        {
            return Answer::Failed(format!("flush ending at send {i}: {e}"));
        }
    }
    Answer::Unit
}

/// `n` raw calls of `payload` to an echo, checking each answer; each
/// round trip in µs when `timed`.
async fn raw_call_loop(
    target: Address,
    n: u32,
    payload: &[u8],
    timed: bool,
) -> Result<Vec<u32>, String> {
    let mut times = Vec::with_capacity(if timed { n as usize } else { 0 });
    for i in 0..n {
        let start = timed.then(skyhost_sdk::now);
        match skyhost_sdk::call_raw(target, payload).await {
            Ok(bytes) if bytes == payload => {}
            Ok(_) => return Err(format!("call {i} of {n}: other bytes")),
            Err(e) => return Err(format!("call {i} of {n}: {e}")),
        }
        if let Some(start) = start {
            let micros = (skyhost_sdk::now() - start).as_micros();
            times.push(u32::try_from(micros).unwrap_or(u32::MAX));
        }
    }
    Ok(times)
}

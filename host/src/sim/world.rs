//! What a simulated harbor and a simulated cluster share: the plan a seed
//! draws (nodes, traffic, faults), the callers that make traffic and
//! report it to the model, the host that writes garbage, and the step
//! loop that applies the faults, repairs everything and lets the run end
//! with one call from every node to every node.
//!
//! ```text
//!  Plan::draw(seed) ─> drive(): faults at their times ─> turmoil::Sim
//!                      World::fault / probe / repaired   (what differs)
//!  each node: caller() ─> Reach (harbor: an address; cluster: a node name)
//!             answers, errors, deliveries ─> Model
//! ```

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::model::{Id, Model, Outcome};
use crate::runtime::endpoint::HostEndpoint;
use crate::runtime::{Address, Kernel, Message, TenantId, Waiter, kind};

pub(super) const HEARTBEAT: Duration = Duration::from_millis(250);
pub(super) const DEAD_AFTER: Duration = Duration::from_millis(1000);
/// The most latency a plan gives every message.
pub(super) const MAX_LATENCY: Duration = Duration::from_millis(400);
/// How soon a call must end once it can go: a peer that went silent is
/// found dead (`DEAD_AFTER`, checked every heartbeat), a link that cannot
/// be made fails within `DEAD_AFTER`, and an answer takes a round trip at
/// the worst latency.
pub(super) const ENDS_WITHIN: Duration = Duration::from_millis(
    DEAD_AFTER.as_millis() as u64
        + 2 * HEARTBEAT.as_millis() as u64
        + 2 * MAX_LATENCY.as_millis() as u64,
);
/// How long a caller waits before it counts a call as hung: a call must
/// end well before (a node that hangs is dead after `DEAD_AFTER`).
pub(super) const CALL_DEADLINE: Duration = Duration::from_secs(5);
/// Start-up: every node joins before traffic and faults begin.
pub(super) const WARM_UP: Duration = Duration::from_secs(1);
/// From the last repair until the calls that must be answered: links
/// found dead, redialled (backoff ≤ 1 s) and joined again.
pub(super) const SETTLE: Duration = Duration::from_secs(5);

/// A fault the step loop applies at its time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Fault {
    /// No traffic between the two nodes: what was in flight is lost.
    Partition(u8, u8),
    /// The link between the two carries again (new connections work; an
    /// old one may have lost frames mid-way).
    Repair(u8, u8),
    /// Traffic between the two is held (a hung peer: sockets open).
    Hold(u8, u8),
    /// What was held goes on.
    Release(u8, u8),
    /// The node's process dies: everything it held is lost.
    Crash(u8),
    /// The crashed node starts again, at the same address (and harbor id).
    Restart(u8),
    /// Every message takes up to this long (0: back to normal).
    Latency(Duration),
    /// Cluster: the first node's config says the second is offline
    /// (`false`), and is reloaded.
    Offline(u8, u8),
    /// Cluster: the first node's config names the second again.
    Online(u8, u8),
    /// Cluster: the first node's config no longer names the second.
    Forget(u8, u8),
    /// Cluster: the crashed node starts again at a new port; every node's
    /// config learns it by a [`Fault::Reload`] of its own.
    Move(u8),
    /// Cluster: the node reloads its config file as it now reads.
    Reload(u8),
}

/// What one seed runs.
pub(super) struct Plan {
    pub nodes: u8,
    pub traffic: Duration,
    pub faults: Vec<(Duration, Fault)>,
    /// Whether a host that is no node writes garbage to the nodes' ports.
    pub garbage: bool,
}

/// Which faults a plan may draw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Faults {
    /// Network and process faults.
    Harbor,
    /// Those, and cluster configs reloaded mid-traffic.
    Cluster,
}

impl Plan {
    /// The plan seed `seed` draws: 2–6 nodes.
    pub fn draw(seed: u64, faults: Faults) -> Plan {
        let nodes = StdRng::seed_from_u64(seed).random_range(2..=6u8);
        Plan::draw_for(seed, nodes, faults)
    }

    /// The plan seed `seed` draws for `nodes` nodes.
    pub fn draw_for(seed: u64, nodes: u8, kinds: Faults) -> Plan {
        let mut rng = StdRng::seed_from_u64(seed);
        let _ = rng.random_range(2..=6u8);
        let traffic = Duration::from_millis(rng.random_range(2_000..=6_000));
        let mut faults = Vec::new();
        let classes = match kinds {
            Faults::Harbor => 4,
            Faults::Cluster => 7,
        };
        for _ in 0..rng.random_range(0..=4) {
            let at = WARM_UP + traffic.mul_f64(rng.random_range(0.0..0.9));
            let lasts = Duration::from_millis(rng.random_range(100..=3_000));
            let a = rng.random_range(1..=nodes);
            let b = loop {
                let b = rng.random_range(1..=nodes);
                if b != a {
                    break b;
                }
            };
            let (start, end) = match rng.random_range(0..classes) {
                0 => (Fault::Partition(a, b), Fault::Repair(a, b)),
                1 => (Fault::Hold(a, b), Fault::Release(a, b)),
                2 => (Fault::Crash(a), Fault::Restart(a)),
                3 => (
                    Fault::Latency(Duration::from_millis(
                        rng.random_range(20..=MAX_LATENCY.as_millis() as u64),
                    )),
                    Fault::Latency(Duration::ZERO),
                ),
                4 => (Fault::Offline(a, b), Fault::Online(a, b)),
                5 => (Fault::Forget(a, b), Fault::Online(a, b)),
                _ => {
                    // Each node's file is edited at its own moment.
                    for n in 1..=nodes {
                        let late = Duration::from_millis(rng.random_range(0..=1_000));
                        faults.push((at + lasts + late, Fault::Reload(n)));
                    }
                    (Fault::Crash(a), Fault::Move(a))
                }
            };
            faults.push((at, start));
            faults.push((at + lasts, end));
        }
        // Stable: a reload drawn at the moment of its move comes after it.
        faults.sort_by_key(|(at, _)| *at);
        Plan {
            nodes,
            traffic,
            faults,
            garbage: rng.random_bool(0.5),
        }
    }

    /// When each node is down: `(node, from, to)`, as the step loop
    /// applies crashes and restarts (a crash of a node that is down does
    /// nothing; every node is up again when the traffic ends).
    pub fn downs(&self) -> Vec<(u8, Duration, Duration)> {
        let end = WARM_UP + self.traffic;
        let mut down: BTreeMap<u8, Duration> = BTreeMap::new();
        let mut spans = Vec::new();
        for &(at, fault) in &self.faults {
            match fault {
                Fault::Crash(n) if !down.contains_key(&n) => {
                    down.insert(n, at);
                }
                Fault::Restart(n) | Fault::Move(n) => {
                    if let Some(from) = down.remove(&n) {
                        spans.push((n, from, at.min(end)));
                    }
                }
                _ => {}
            }
        }
        spans.extend(down.into_iter().map(|(n, from)| (n, from, end)));
        spans
    }

    /// When the link between two nodes is cut or held: `(a, b, from, to)`;
    /// and every latency fault as `(0, 0, from, to)`.
    pub fn disturbances(&self) -> Vec<(u8, u8, Duration, Duration)> {
        let end = WARM_UP + self.traffic;
        let mut open: Vec<(u8, u8, Duration)> = Vec::new();
        let mut spans = Vec::new();
        for &(at, fault) in &self.faults {
            match fault {
                Fault::Partition(a, b) | Fault::Hold(a, b) => open.push((a, b, at)),
                Fault::Repair(a, b) | Fault::Release(a, b) => {
                    if let Some(i) = open.iter().position(|&(x, y, _)| (x, y) == (a, b)) {
                        let (_, _, from) = open.remove(i);
                        spans.push((a, b, from, at.min(end)));
                    }
                }
                Fault::Latency(d) if !d.is_zero() => open.push((0, 0, at)),
                Fault::Latency(_) => {
                    if let Some(i) = open.iter().position(|&(x, y, _)| (x, y) == (0, 0)) {
                        let (_, _, from) = open.remove(i);
                        spans.push((0, 0, from, at.min(end)));
                    }
                }
                _ => {}
            }
        }
        spans.extend(open.into_iter().map(|(a, b, from)| (a, b, from, end)));
        spans
    }
}

/// Where the run is, as the nodes' callers see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(super) enum Phase {
    /// Calls and sends at random, faults happening.
    Traffic = 0,
    /// Everything repaired: no new traffic while the links settle.
    Settle = 1,
    /// Each node calls every node once; every call must be answered.
    Last = 2,
}

/// What the hosts share with each other and the step loop; `P` is what a
/// node's world part is (its harbor, its cluster side).
pub(super) struct Shared<P> {
    pub nodes: u8,
    pub seed: u64,
    pub model: Mutex<Model>,
    /// Each node's echo, while its node runs.
    pub echoes: Mutex<BTreeMap<u8, Address>>,
    phase: AtomicU8,
    /// Per node: told when its process is to die, so it closes its
    /// sockets in order first ([`super::SimNet::close_all`]).
    pub dying: BTreeMap<u8, Arc<tokio::sync::Notify>>,
    /// Each node's part, while its node runs.
    parts: Mutex<BTreeMap<u8, std::sync::Weak<P>>>,
}

impl<P> Shared<P> {
    pub fn new(nodes: u8, seed: u64) -> Self {
        Shared {
            nodes,
            seed,
            model: Mutex::default(),
            echoes: Mutex::default(),
            phase: AtomicU8::new(Phase::Traffic as u8),
            dying: (1..=nodes).map(|n| (n, Arc::default())).collect(),
            parts: Mutex::default(),
        }
    }

    pub fn model(&self) -> MutexGuard<'_, Model> {
        lock(&self.model)
    }

    pub fn echo(&self, node: u8) -> Option<Address> {
        lock(&self.echoes).get(&node).copied()
    }

    /// Node `node`'s echo and part are up.
    pub fn joined(&self, node: u8, echo: Address, part: &Arc<P>) {
        lock(&self.parts).insert(node, Arc::downgrade(part));
        lock(&self.echoes).insert(node, echo);
    }

    /// Node `node`'s part, while its node runs.
    pub fn part(&self, node: u8) -> Option<Arc<P>> {
        lock(&self.parts)
            .get(&node)
            .and_then(std::sync::Weak::upgrade)
    }

    pub fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Relaxed) {
            0 => Phase::Traffic,
            1 => Phase::Settle,
            _ => Phase::Last,
        }
    }

    fn set_phase(&self, phase: Phase) {
        self.phase.store(phase as u8, Ordering::Relaxed);
    }
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A payload naming call or send `id`: a tag byte, then the id.
pub(super) fn encode(tag: u8, (node, incarnation, n): Id) -> Vec<u8> {
    let mut p = vec![tag, node];
    p.extend_from_slice(&incarnation.to_le_bytes());
    p.extend_from_slice(&n.to_le_bytes());
    p
}

pub(super) fn decode(payload: &[u8]) -> Option<(u8, Id)> {
    let [tag, node, rest @ ..] = payload else {
        return None;
    };
    let incarnation = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?);
    let n = u64::from_le_bytes(rest.get(4..12)?.try_into().ok()?);
    Some((*tag, (*node, incarnation, n)))
}

pub(super) const CALL: u8 = b'C';
pub(super) const SEND: u8 = b'S';

/// The simulated host name of node `node`.
pub(super) fn host(node: u8) -> String {
    format!("n{node}")
}

/// A node's echo: answers calls, reports sends to the model.
pub(super) fn echo<P: Send + Sync + 'static>(
    shared: &Arc<Shared<P>>,
    id: u8,
) -> impl Fn(&Message) -> crate::runtime::tests::Act + Send + Sync + 'static {
    use crate::runtime::tests::Act;
    let shared = shared.clone();
    move |m: &Message| match decode(&m.payload) {
        Some((CALL, _)) if m.wants_reply() => Act::Answer(m.payload.to_vec()),
        Some((SEND, sent)) if !m.wants_reply() => {
            shared.model().delivered(sent);
            Act::Nothing
        }
        _ => {
            shared.model().stray(format!("echo {id} got {m:?}"));
            Act::Nothing
        }
    }
}

/// How a node's caller reaches a node's echo.
pub(super) trait Reach {
    /// Starts a call to node `target`'s echo with `request` (from the
    /// caller, with its session). `None`: no call made (the world knows no
    /// way to it); `Some(Err)`: it failed at once, with (cause, detail).
    fn call(&self, target: u8, request: Message) -> Option<Result<(), (u8, String)>>;
    /// Sends `message` to node `target`'s echo. `None`: not sent;
    /// `Some(refused)`: sent, or refused at once.
    fn send(&self, target: u8, message: Message) -> Option<bool>;
    /// Sends `run` (from the caller, in order) to node `target`'s echo as
    /// the node sends a guest's batch. `None`: not sent; else whether each
    /// was refused at once.
    fn send_run(&self, target: u8, run: Vec<Message>) -> Option<Vec<bool>> {
        run.into_iter().map(|m| self.send(target, m)).collect()
    }
    /// One-way messages the node took and then dropped, so far.
    fn dropped(&self) -> u64;
    /// Whether the world has name queries that end like calls (cluster).
    fn queries(&self) -> bool {
        false
    }
    /// Asks node `target` where its `echo` is; the answer (4 bytes) or an
    /// error comes to `waiter`.
    fn query(&self, _target: u8, _waiter: Waiter) {}
}

/// What a caller's session waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ask {
    /// An echo's answer: the call's own payload.
    Call,
    /// A name's address: 4 bytes.
    Query,
}

/// The caller's sessions: each one's call number (kept for good, so a
/// second answer is seen as one), and whether it is still waiting.
#[derive(Default)]
struct Sessions {
    numbers: HashMap<u32, (u64, Ask)>,
    waiting: HashSet<u32>,
}

type Open = Arc<Mutex<Sessions>>;

/// The node's caller: random calls and sends all through the traffic
/// phase, one call to every node in the last.
pub(super) async fn caller<P: Send + Sync + 'static>(
    shared: &Arc<Shared<P>>,
    kernel: &Arc<Kernel>,
    reach: &dyn Reach,
    (id, incarnation): (u8, u32),
) -> turmoil::Result {
    let mut endpoint = HostEndpoint::new(kernel, "caller", kernel.host_tenant.clone());
    let me = endpoint.address();
    let open: Open = Arc::default();
    let answers = {
        let (shared, open) = (shared.clone(), open.clone());
        async move {
            while let Some(m) = endpoint.recv().await {
                let number = {
                    let mut sessions = lock(&open);
                    sessions.waiting.remove(&m.session);
                    sessions.numbers.get(&m.session).copied()
                };
                let mut model = shared.model();
                let Some((number, ask)) = number else {
                    model.stray(format!("{me} got an answer to no open call: {m:?}"));
                    continue;
                };
                let call = (id, incarnation, number);
                match m.kind {
                    kind::RESPONSE
                        if ask == Ask::Call && decode(&m.payload) == Some((CALL, call)) =>
                    {
                        model.ended(call, Outcome::Reply);
                    }
                    kind::RESPONSE if ask == Ask::Query && m.payload.len() == 4 => {
                        model.ended(call, Outcome::Reply);
                    }
                    kind::ERROR => {
                        let cause = m.payload.first().copied().unwrap_or(0);
                        let detail = String::from_utf8_lossy(m.payload.get(1..).unwrap_or(&[]));
                        model.ended(call, Outcome::Failed(cause, detail.into_owned()));
                    }
                    _ => model.stray(format!("call {call:?} answered with another's: {m:?}")),
                }
            }
        }
    };
    kernel.tasks.spawn(answers);
    let seed = shared.seed ^ (u64::from(id) << 40) ^ (u64::from(incarnation) << 48);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut number = 0u64;
    let mut last_round_done = false;
    let call = |number: u64, target: u8, after_repair: bool| {
        call_echo(
            shared,
            kernel,
            reach,
            (me, &open),
            (id, incarnation, number),
            target,
            after_repair,
        );
    };
    loop {
        shared
            .model()
            .dropped_so_far(id, incarnation, reach.dropped());
        match shared.phase() {
            Phase::Traffic => {}
            Phase::Settle => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            Phase::Last if last_round_done => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            Phase::Last => {
                last_round_done = true;
                for target in 1..=shared.nodes {
                    number += 1;
                    call(number, target, true);
                }
                continue;
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(1..=20))).await;
        let target = rng.random_range(1..=shared.nodes);
        number += 1;
        if reach.queries() && rng.random_bool(0.1) {
            let query = (id, incarnation, number);
            query_echo(shared, kernel, reach, (me, &open), query, target);
        } else if rng.random_bool(0.6) {
            call(number, target, false);
        } else if rng.random_bool(0.5) {
            let made = (id, incarnation, number);
            let message = message(kind::TEXT, me, 0, encode(SEND, made));
            if let Some(refused) = reach.send(target, message) {
                shared.model().sent(made, target, refused);
            }
        } else {
            // A run, as a guest's batch of sends leaves: one frame.
            let made: Vec<_> = (0..rng.random_range(2..=4))
                .map(|i| (id, incarnation, number + i))
                .collect();
            number += made.len() as u64 - 1;
            let run = made
                .iter()
                .map(|&m| message(kind::TEXT, me, 0, encode(SEND, m)))
                .collect();
            if let Some(refused) = reach.send_run(target, run) {
                for (m, refused) in made.into_iter().zip(refused) {
                    shared.model().sent(m, target, refused);
                }
            }
        }
    }
}

fn message(kind: u8, source: Address, session: u32, payload: Vec<u8>) -> Message {
    Message {
        kind,
        source,
        session,
        tenant: TenantId::SYSTEM,
        payload: payload.into(),
        trace: 0,
    }
}

/// Calls `target`'s echo as call `call`, and counts it hung if no answer
/// or error came by [`CALL_DEADLINE`].
fn call_echo<P: Send + Sync + 'static>(
    shared: &Arc<Shared<P>>,
    kernel: &Arc<Kernel>,
    reach: &dyn Reach,
    (me, open): (Address, &Open),
    call: Id,
    target: u8,
    after_repair: bool,
) {
    let session = open_session(open, call, Ask::Call);
    let request = message(kind::REQUEST, me, session, encode(CALL, call));
    // Answers are read by another task, after this one yields: the model
    // hears of the call first.
    let started = reach.call(target, request);
    if started.is_some() {
        shared.model().called(call, target, after_repair);
    }
    match started {
        None => {
            lock(open).waiting.remove(&session);
            return;
        }
        Some(Err((cause, detail))) => {
            lock(open).waiting.remove(&session);
            shared.model().ended(call, Outcome::Failed(cause, detail));
            return;
        }
        Some(Ok(())) => {}
    }
    watch_deadline(shared, kernel, open, session, call);
}

/// Opens the caller's session for `call`.
fn open_session(open: &Open, call: Id, ask: Ask) -> u32 {
    let session = u32::try_from(call.2).unwrap_or(u32::MAX);
    let mut sessions = lock(open);
    sessions.numbers.insert(session, (call.2, ask));
    sessions.waiting.insert(session);
    session
}

/// Asks `target` where its echo is, as call `call`: an answer or an error
/// must end it, once, by [`CALL_DEADLINE`].
fn query_echo<P: Send + Sync + 'static>(
    shared: &Arc<Shared<P>>,
    kernel: &Kernel,
    reach: &dyn Reach,
    (me, open): (Address, &Open),
    call: Id,
    target: u8,
) {
    let session = open_session(open, call, Ask::Query);
    shared.model().called(call, target, false);
    reach.query(target, Waiter { to: me, session });
    watch_deadline(shared, kernel, open, session, call);
}

/// Counts call `call` hung if its session is still open after [`CALL_DEADLINE`].
fn watch_deadline<P: Send + Sync + 'static>(
    shared: &Arc<Shared<P>>,
    kernel: &Kernel,
    open: &Open,
    session: u32,
    call: Id,
) {
    let (shared, open) = (shared.clone(), open.clone());
    kernel.tasks.spawn(async move {
        tokio::time::sleep(CALL_DEADLINE).await;
        if lock(&open).waiting.remove(&session) {
            shared.model().ended(call, Outcome::Timeout);
        }
    });
}

/// What a peer that is no node writes: inputs of the fuzz corpora named
/// (handshakes, link streams), and random bytes.
fn garbage_inputs(corpora: &[&str]) -> Vec<Vec<u8>> {
    let corpus = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let mut inputs: Vec<(std::path::PathBuf, Vec<u8>)> = corpora
        .iter()
        .filter_map(|target| std::fs::read_dir(corpus.join(target)).ok())
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|entry| Some((entry.path(), std::fs::read(entry.path()).ok()?)))
        .collect();
    inputs.sort();
    inputs.into_iter().map(|(_, bytes)| bytes).collect()
}

/// A host that is no node: all through the traffic, it connects to a
/// random node at one of the ports `ports` gives for it, writes garbage
/// (an input of `corpora`, or random bytes), and waits for the node to
/// close the connection. A node that leaves it open past twice its
/// handshake deadline breaks a promise (a malformed peer costs one
/// connection and no more); what the garbage does to everything else is
/// what the other promises check.
pub(super) async fn garbage<P>(
    shared: Arc<Shared<P>>,
    until: Duration,
    corpora: &[&str],
    ports: impl Fn(u8, &mut StdRng) -> u16,
) -> turmoil::Result {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let inputs = garbage_inputs(corpora);
    let mut rng = StdRng::seed_from_u64(shared.seed ^ 0x6a72_6261_6765);
    while turmoil::sim_elapsed().unwrap_or_default() < until {
        tokio::time::sleep(Duration::from_millis(rng.random_range(50..=500))).await;
        let node = rng.random_range(1..=shared.nodes);
        let port = ports(node, &mut rng);
        let junk = match inputs.len() {
            n if n > 0 && rng.random_bool(0.7) => inputs[rng.random_range(0..n)].clone(),
            _ => (0..rng.random_range(1..=2_000))
                .map(|_| rng.random())
                .collect(),
        };
        let Ok(mut stream) = turmoil::net::TcpStream::connect((host(node).as_str(), port)).await
        else {
            continue;
        };
        if stream.write_all(&junk).await.is_err() {
            continue;
        }
        let mut sink = [0u8; 4096];
        let closed = tokio::time::timeout(DEAD_AFTER * 2, async {
            while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
        })
        .await;
        if closed.is_err() {
            shared.model().stray(format!(
                "node {node} kept a garbage connection on port {port} open ({} bytes written)",
                junk.len()
            ));
        }
    }
    std::future::pending().await
}

/// What differs between worlds in the step loop.
pub(super) trait World {
    /// Applies a fault only this world knows (a config reload).
    fn fault(&mut self, _sim: &mut turmoil::Sim<'_>, _fault: Fault) {}
    /// A crashed node starts again (a [`Fault::Move`]: elsewhere).
    fn restart(&mut self, sim: &mut turmoil::Sim<'_>, node: u8, _moved: bool) {
        sim.bounce(host(node));
    }
    /// Looks at the nodes at `now`, before each step (global names).
    fn look(&mut self, _now: Duration) {}
    /// Everything was repaired at `now`: undo what [`fault`](Self::fault) did.
    fn repaired(&mut self, _sim: &mut turmoil::Sim<'_>) {}
    /// The run is over: the last looks.
    fn end(&mut self, _end: Duration) {}
}

/// The times of a run with `plan`.
pub(super) struct Times {
    pub end_of_traffic: Duration,
    pub last_round: Duration,
    pub end: Duration,
}

impl Times {
    pub fn of(plan: &Plan) -> Times {
        let end_of_traffic = WARM_UP + plan.traffic;
        let last_round = end_of_traffic + SETTLE;
        Times {
            end_of_traffic,
            last_round,
            end: last_round + CALL_DEADLINE + Duration::from_secs(1),
        }
    }
}

/// A simulation for `plan`: its clock, network and seed.
pub(super) fn simulation<'a>(seed: u64, plan: &Plan) -> turmoil::Sim<'a> {
    super::log_if_asked();
    fastrand::seed(seed);
    turmoil::Builder::new()
        .rng_seed(seed)
        .simulation_duration(Times::of(plan).end + Duration::from_secs(10))
        .tick_duration(Duration::from_millis(1))
        // Room for every node of the largest run dialling one at once.
        .tcp_capacity(4096)
        .build()
}

/// Runs the step loop of `plan` on `sim` (its hosts added), then checks
/// the model: its event log, or every promise broken.
pub(super) fn drive<P>(
    mut sim: turmoil::Sim<'_>,
    plan: &Plan,
    shared: &Shared<P>,
    world: &mut dyn World,
) -> Result<Vec<String>, String> {
    let times = Times::of(plan);
    let mut faults = plan.faults.iter().peekable();
    let mut crashed = BTreeSet::new();
    // The links ever cut or held: repaired and released at the end.
    let mut cut = BTreeSet::new();
    // Nodes told to die, and when their process goes (a tick later, once
    // they closed their sockets).
    let mut dying: Vec<(Duration, u8)> = Vec::new();
    let mut repaired = false;
    while sim.elapsed() < times.end {
        let now = sim.elapsed();
        while let Some(&(_, fault)) = faults.next_if(|(at, _)| *at <= now) {
            shared
                .model()
                .log
                .push(format!("{:>8.3} fault {fault:?}", now.as_secs_f64()));
            match fault {
                Fault::Partition(a, b) => {
                    cut.insert((a, b));
                    sim.partition(host(a), host(b));
                }
                Fault::Repair(a, b) => sim.repair(host(a), host(b)),
                Fault::Hold(a, b) => {
                    cut.insert((a, b));
                    sim.hold(host(a), host(b));
                }
                Fault::Release(a, b) => sim.release(host(a), host(b)),
                Fault::Crash(n) if crashed.insert(n) => {
                    lock(&shared.echoes).remove(&n);
                    shared.dying[&n].notify_one();
                    dying.push((now + Duration::from_millis(1), n));
                }
                Fault::Restart(n) | Fault::Move(n) if crashed.remove(&n) => {
                    world.restart(&mut sim, n, matches!(fault, Fault::Move(_)));
                }
                Fault::Crash(_) | Fault::Restart(_) | Fault::Move(_) => {}
                Fault::Latency(d) => sim.set_max_message_latency(d),
                other => world.fault(&mut sim, other),
            }
        }
        for (_, n) in dying.extract_if(.., |(at, _)| *at <= now) {
            sim.crash(host(n));
            shared.model().crashed(n, now);
        }
        if !repaired && now >= times.end_of_traffic {
            repaired = true;
            shared.set_phase(Phase::Settle);
            for &(a, b) in &cut {
                sim.release(host(a), host(b));
                sim.repair(host(a), host(b));
            }
            sim.set_max_message_latency(Duration::ZERO);
            for n in std::mem::take(&mut crashed) {
                world.restart(&mut sim, n, false);
            }
            world.repaired(&mut sim);
            shared
                .model()
                .log
                .push(format!("{:>8.3} all repaired", now.as_secs_f64()));
        }
        world.look(now);
        if now >= times.last_round && shared.phase() == Phase::Settle {
            shared.set_phase(Phase::Last);
        }
        sim.step().map_err(|e| format!("a node failed: {e}"))?;
    }
    world.end(times.end);
    let model = shared.model();
    if std::env::var_os("SKYHOST_SIM_SLOWEST").is_some() {
        eprintln!("slowest {:?} faults {:?}", model.slowest(), plan.faults);
    }
    if std::env::var_os("SKYHOST_SIM_LOG").is_some() {
        eprintln!("{}", model.log.join("\n"));
    }
    let broken = model.check();
    if broken.is_empty() {
        return Ok(model.log.clone());
    }
    let (calls, sends) = model.counts();
    Err(format!(
        "{} nodes, {calls} calls, {sends} sends, faults {:?}\n{}",
        plan.nodes,
        plan.faults,
        broken.join("\n")
    ))
}

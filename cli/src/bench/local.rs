//! Workloads inside one node and across harbor nodes: one-way, call round
//! trips, concurrency, spawn, memory, preemption, the service ceiling.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use skyhost::{Address, Client};
use skyhost_test_proto::{Command, Reply};

use super::*;

/// One sender service sends `n` 16-byte messages to one receiver service;
/// the clock stops when the receiver has handled the last one.
pub(super) async fn local_oneway(b: &BenchNode, n: u32) -> anyhow::Result<f64> {
    let sink = b.spawn("testkit").await?;
    let sender = b.spawn("testkit").await?;
    oneway(b, sender, sink, n).await
}

/// `local-oneway` with the sender's messages going out through an outbox
/// (`send-batch`), 64 per host call.
pub(super) async fn local_oneway_batched(b: &BenchNode, n: u32) -> anyhow::Result<f64> {
    let sink = b.spawn("testkit").await?;
    let sender = b.spawn("testkit").await?;
    let send = |n: u32| Command::SendLoopBatched {
        targets: vec![sink.0],
        n,
        payload: vec![0u8; 12],
        per_flush: 64,
    };
    send_and_count(b, sender, &b.client, sink, n, send).await
}

/// Which slots the woken services of `wake-rtt` find.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Slots {
    /// Never used: the first wakes in a fresh node.
    Cold,
    /// Used before: each echo was woken once and hibernated again, as on a
    /// node that has run a while.
    Warm,
}

/// `n` echo services left to hibernate, then called twice each by a
/// testkit (each call timed inside the node): the median round trip of a
/// call that wakes its service (the second call's, right after, is logged).
pub(super) async fn wake_rtt(b: &BenchNode, n: u32, slots: Slots) -> anyhow::Result<f64> {
    let caller = b.spawn("testkit").await?;
    let mut echoes = Vec::with_capacity(n as usize);
    for _ in 0..n {
        echoes.push(b.spawn("echo").await?);
    }
    all_hibernated(b, &echoes).await?;
    if slots == Slots::Warm {
        for &echo in &echoes {
            b.client.call(echo, vec![0u8; 16]).await?;
        }
        all_hibernated(b, &echoes).await?;
    }
    let ahead_before = b.node.wakes_ahead();
    let mut first = Vec::with_capacity(echoes.len());
    let mut second = Vec::with_capacity(echoes.len());
    for &echo in &echoes {
        let command = Command::RawCallLoopTimed {
            target: echo.0,
            n: 2,
            payload: vec![0u8; 16],
        };
        match b.command(caller, &command).await? {
            Reply::Order(times) if times.len() == 2 => {
                first.push(times[0]);
                second.push(times[1]);
            }
            r => bail!("RawCallLoopTimed answered {r:?}"),
        }
    }
    first.sort_unstable();
    second.sort_unstable();
    eprintln!(
        "wake-rtt: second call to a woken echo {} µs (median); {} of {} wakes took an instance made ahead",
        second[second.len() / 2],
        b.node.wakes_ahead() - ahead_before,
        echoes.len()
    );
    Ok(f64::from(first[first.len() / 2]))
}

/// Waits until every service of `services` is hibernated.
async fn all_hibernated(b: &BenchNode, services: &[Address]) -> anyhow::Result<()> {
    let start = Instant::now();
    let asleep = |a: &Address| {
        b.node
            .service_info(*a)
            .is_some_and(|i| i.state == "hibernated")
    };
    loop {
        let awake = services.iter().filter(|a| !asleep(a)).count();
        if awake == 0 {
            return Ok(());
        }
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(30),
            "{awake} of {} services did not hibernate",
            services.len()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// `local-oneway` with the receiver on harbor 2.
pub(super) async fn harbor_oneway(b: &BenchNode, n: u32) -> anyhow::Result<f64> {
    let sink = b.spawn_remote("testkit").await?;
    let sender = b.spawn("testkit").await?;
    oneway(b, sender, sink, n).await
}

pub(super) async fn oneway(
    b: &BenchNode,
    sender: Address,
    sink: Address,
    n: u32,
) -> anyhow::Result<f64> {
    let counter = if sink.harbor() == b.node.harbor_id() {
        &b.client
    } else {
        b.peer_client
            .as_ref()
            .context("no client on the sink's node")?
    };
    let send = |n: u32| Command::SendLoop {
        target: sink.0,
        n,
        payload: vec![0u8; 16],
    };
    send_and_count(b, sender, counter, sink, n, send).await
}

/// Warms up with 1,000 messages, then times `n`: from the first send to the
/// sink having counted the last.
pub(super) async fn send_and_count(
    b: &BenchNode,
    sender: Address,
    counter: &Client,
    sink: Address,
    n: u32,
    send: impl Fn(u32) -> Command,
) -> anyhow::Result<f64> {
    b.command(sender, &send(1_000)).await?;
    wait_count(counter, sink, 1_000).await?;
    let start = Instant::now();
    b.command(sender, &send(n)).await?;
    wait_count(counter, sink, 1_000 + u64::from(n)).await?;
    Ok(f64::from(n) / start.elapsed().as_secs_f64())
}

pub(super) async fn wait_count(client: &Client, sink: Address, n: u64) -> anyhow::Result<()> {
    loop {
        match command_via(client, sink, &Command::Count).await? {
            Reply::Count(c) if c >= n => return Ok(()),
            Reply::Count(_) => tokio::time::sleep(Duration::from_micros(200)).await,
            r => bail!("Count answered {r:?}"),
        }
    }
}

/// One caller service makes `n` sequential `Echo` calls to one testkit service.
pub(super) async fn local_call_rtt(b: &BenchNode, n: u32) -> anyhow::Result<f64> {
    let echo = b.spawn("testkit").await?;
    let caller = b.spawn("testkit").await?;
    call_rtt(b, caller, echo, n).await
}

/// `local-call-rtt` with each call timed out after 5 s, as Erlang's
/// `gen_server:call` is by default: Erlang's `local-call-rtt` is the figure
/// to read it against.
pub(super) async fn local_call_timeout_rtt(b: &BenchNode, n: u32) -> anyhow::Result<f64> {
    let echo = b.spawn("testkit").await?;
    let caller = b.spawn("testkit").await?;
    call_rtt_within(b, caller, echo, n, Some(5_000)).await
}

/// `local-call-rtt` with the server on harbor 2, each call timed by the
/// caller: the figure is the median; the worst and p99 are logged.
pub(super) async fn harbor_call_rtt(b: &BenchNode, n: u32) -> anyhow::Result<f64> {
    let echo = b.spawn_remote("testkit").await?;
    let caller = b.spawn("testkit").await?;
    call_rtt(b, caller, echo, 2_000).await?;
    let command = Command::CallLoopTimed {
        target: echo.0,
        n,
        payload: vec![0u8; 16],
    };
    let Reply::Order(mut times) = b.command(caller, &command).await? else {
        bail!("CallLoopTimed answered something else");
    };
    anyhow::ensure!(
        times.len() == n as usize,
        "timed {} of {n} calls",
        times.len()
    );
    times.sort_unstable();
    eprintln!(
        "harbor-call-rtt: worst {} µs, p99 {} µs",
        times[times.len() - 1],
        times[times.len() * 99 / 100]
    );
    Ok(f64::from(times[times.len() / 2]))
}

pub(super) async fn call_rtt(
    b: &BenchNode,
    caller: Address,
    echo: Address,
    n: u32,
) -> anyhow::Result<f64> {
    call_rtt_within(b, caller, echo, n, None).await
}

/// `caller` calls `echo` 10,000 times to warm up, then `n` times: µs a
/// call; each call timed out after `timeout_ms` when given.
async fn call_rtt_within(
    b: &BenchNode,
    caller: Address,
    echo: Address,
    n: u32,
    timeout_ms: Option<u32>,
) -> anyhow::Result<f64> {
    let command = |n| {
        let (target, payload) = (echo.0, vec![0u8; 16]);
        match timeout_ms {
            Some(timeout_ms) => Command::CallLoopWithin {
                target,
                n,
                payload,
                timeout_ms,
            },
            None => Command::CallLoop { target, n, payload },
        }
    };
    b.command(caller, &command(10_000)).await?;
    let start = Instant::now();
    b.command(caller, &command(n)).await?;
    Ok(start.elapsed().as_secs_f64() * 1e6 / f64::from(n))
}

/// `callers` services each make `per_caller` sequential `Echo` calls to one testkit service.
pub(super) async fn local_concurrent(
    b: &BenchNode,
    callers: u32,
    per_caller: u32,
) -> anyhow::Result<f64> {
    let echo = b.spawn("testkit").await?;
    concurrent(b, echo, callers, per_caller).await
}

/// `pairs` independent caller → server pairs of testkit services; each
/// caller makes `per_caller` sequential calls to its own server (after
/// `warm` each, untimed); the figure is calls per second over all pairs.
pub(super) async fn local_parallel(
    b: &BenchNode,
    pairs: u32,
    warm: u32,
    per_caller: u32,
) -> anyhow::Result<f64> {
    let mut both = Vec::new();
    for _ in 0..pairs {
        both.push((b.spawn("testkit").await?, b.spawn("testkit").await?));
    }
    pairs_loop(b, &both, warm).await?;
    let start = Instant::now();
    pairs_loop(b, &both, per_caller).await?;
    Ok(f64::from(pairs * per_caller) / start.elapsed().as_secs_f64())
}

/// Each `(caller, server)` pair at once: the caller makes `n` calls to its server.
async fn pairs_loop(b: &BenchNode, pairs: &[(Address, Address)], n: u32) -> anyhow::Result<()> {
    let runs = pairs
        .iter()
        .map(|&(caller, server)| {
            let command = Command::CallLoop {
                target: server.0,
                n,
                payload: vec![0u8; 16],
            };
            (caller, command)
        })
        .collect();
    run_all(b, runs).await
}

/// `local-concurrent` with the server on harbor 2.
pub(super) async fn harbor_concurrent(
    b: &BenchNode,
    callers: u32,
    per_caller: u32,
) -> anyhow::Result<f64> {
    let echo = b.spawn_remote("testkit").await?;
    concurrent(b, echo, callers, per_caller).await
}

pub(super) async fn concurrent(
    b: &BenchNode,
    echo: Address,
    callers: u32,
    per_caller: u32,
) -> anyhow::Result<f64> {
    let command = Command::CallLoop {
        target: echo.0,
        n: per_caller,
        payload: vec![0u8; 16],
    };
    callers_loop(b, callers, per_caller, &command).await
}

/// `callers` testkit services on this node each run `command` (a loop of
/// `per_caller` calls) at once; the figure is calls per second.
pub(super) async fn callers_loop(
    b: &BenchNode,
    callers: u32,
    per_caller: u32,
    command: &Command,
) -> anyhow::Result<f64> {
    let mut runs = Vec::new();
    for _ in 0..callers {
        runs.push((b.spawn("testkit").await?, command.clone()));
    }
    let start = Instant::now();
    run_all(b, runs).await?;
    Ok(f64::from(callers * per_caller) / start.elapsed().as_secs_f64())
}

/// Each `(service, command)` at once, through a client each; done when
/// every command was answered.
async fn run_all(b: &BenchNode, runs: Vec<(Address, Command)>) -> anyhow::Result<()> {
    let mut calls = tokio::task::JoinSet::new();
    for (service, command) in runs {
        let client = b.node.client();
        calls.spawn(async move { command_via(&client, service, &command).await });
    }
    while let Some(r) = calls.join_next().await {
        r??;
    }
    Ok(())
}

/// A service spawns `n` echo services; each spawn ends when the new
/// service's `init` has returned ("ready").
pub(super) async fn spawn(b: &BenchNode, n: u32) -> anyhow::Result<f64> {
    spawn_of(b, "echo", 100, n).await
}

/// Microseconds per service to spawn `n` of `module` at once (after
/// `warm` of them, which compile and warm it), from a testkit.
pub(super) async fn spawn_of(
    b: &BenchNode,
    module: &str,
    warm: u32,
    n: u32,
) -> anyhow::Result<f64> {
    let spawner = b.spawn("testkit").await?;
    let many = |n| Command::SpawnMany {
        module: module.into(),
        n,
    };
    b.command(spawner, &many(warm)).await?;
    let start = Instant::now();
    let Reply::Addresses(a) = b.command(spawner, &many(n)).await? else {
        bail!("SpawnMany answered something else");
    };
    let elapsed = start.elapsed();
    anyhow::ensure!(a.len() == n as usize, "spawned {} of {n}", a.len());
    Ok(elapsed.as_secs_f64() * 1e6 / f64::from(n))
}

/// Microseconds per service to spawn `n` echoes at once and then call
/// each once (after a warm-up of 100): `spawn` with the first message's
/// cost, which a service born hibernated on a template pays at its wake.
pub(super) async fn spawn_then_call(b: &BenchNode, n: u32) -> anyhow::Result<f64> {
    let spawner = b.spawn("testkit").await?;
    let many = |n| Command::SpawnMany {
        module: "echo".into(),
        n,
    };
    let call_each = |targets| Command::CallEach {
        targets,
        payload: vec![7u8; 16],
    };
    let Reply::Addresses(warm) = b.command(spawner, &many(100)).await? else {
        bail!("SpawnMany answered something else");
    };
    b.command(spawner, &call_each(warm)).await?;
    let start = Instant::now();
    let Reply::Addresses(a) = b.command(spawner, &many(n)).await? else {
        bail!("SpawnMany answered something else");
    };
    anyhow::ensure!(a.len() == n as usize, "spawned {} of {n}", a.len());
    let spawned = start.elapsed();
    b.command(spawner, &call_each(a)).await?;
    let elapsed = start.elapsed();
    eprintln!(
        "spawn-then-call: spawns {:.1} µs, first calls {:.1} µs per service",
        spawned.as_secs_f64() * 1e6 / f64::from(n),
        (elapsed - spawned).as_secs_f64() * 1e6 / f64::from(n)
    );
    Ok(elapsed.as_secs_f64() * 1e6 / f64::from(n))
}

/// Resident memory growth per idle live echo service, at `n` services.
pub(super) async fn rss_per_service(b: &BenchNode, n: u32) -> anyhow::Result<f64> {
    rss_of(b, "echo", n).await
}

/// Resident memory growth (KiB) per live service at `n` services of
/// `module`, each having answered a call.
pub(super) async fn rss_of(b: &BenchNode, module: &str, n: u32) -> anyhow::Result<f64> {
    rss_after(b, module, n, false).await
}

/// Resident memory growth (KiB) per service at `n` services of `module`,
/// each having answered a call and hibernated since.
pub(super) async fn hibernated_rss_of(b: &BenchNode, module: &str, n: u32) -> anyhow::Result<f64> {
    rss_after(b, module, n, true).await
}

/// Resident memory growth (KiB) per service at `n` services of `module`,
/// each having answered a call (and, if `hibernated`, hibernated since).
async fn rss_after(b: &BenchNode, module: &str, n: u32, hibernated: bool) -> anyhow::Result<f64> {
    let spawner = b.spawn("testkit").await?;
    let many = |n| Command::SpawnMany {
        module: module.into(),
        n,
    };
    // Ten first, in the state the others will be in when measured: the
    // first spawn's instance (a template's maker) is not counted.
    let called = |n| async move {
        let Reply::Addresses(a) = b.command(spawner, &many(n)).await? else {
            bail!("SpawnMany answered something else");
        };
        // Every service has answered a call, so its instance has run.
        let a: Vec<Address> = a.into_iter().map(Address).collect();
        for &addr in &a {
            b.client.call(addr, vec![1]).await?;
        }
        if hibernated {
            all_hibernated(b, &a).await?;
        }
        anyhow::Ok(a)
    };
    called(10).await?;
    let before = rss_kib()?;
    let kept_before = b.node.hibernated_bytes();
    called(n).await?;
    let after = rss_kib()?;
    if hibernated {
        let kept = b.node.hibernated_bytes().saturating_sub(kept_before);
        eprintln!(
            "{module}: {:.1} KiB kept per hibernated service (state or image)",
            kept as f64 / f64::from(n) / 1024.0
        );
    }
    Ok((after - before) / f64::from(n))
}

/// Round trip (µs) of `n` sequential calls from a testkit service to a
/// service of `module` (an echo: the payload comes back as it went), after
/// a warm-up; as `local-call-rtt`, service to service.
pub(super) async fn call_rtt_of(b: &BenchNode, module: &str, n: u32) -> anyhow::Result<f64> {
    let echo = b.spawn(module).await?;
    let caller = b.spawn("testkit").await?;
    let calls = |n| Command::RawCallLoop {
        target: echo.0,
        n,
        payload: vec![7u8; 16],
    };
    let check = |r: Reply| match r {
        Reply::Unit => Ok(()),
        r => Err(anyhow::anyhow!("RawCallLoop answered {r:?}")),
    };
    check(b.command(caller, &calls(1_000)).await?)?;
    let start = Instant::now();
    check(b.command(caller, &calls(n)).await?)?;
    Ok(start.elapsed().as_secs_f64() * 1e6 / f64::from(n))
}

/// One-way messages a testkit sends the echo service `module` (in any
/// language) per second, until the echo has taken them all: a call from
/// the same sender, queued behind them, is answered after the last.
pub(super) async fn oneway_of(b: &BenchNode, module: &str, n: u32) -> anyhow::Result<f64> {
    let echo = b.spawn(module).await?;
    let sender = b.spawn("testkit").await?;
    let payload = vec![7u8; 16];
    let last_call = Command::RawCallLoop {
        target: echo.0,
        n: 1,
        payload: payload.clone(),
    };
    anyhow::ensure!(
        b.command(sender, &last_call).await? == Reply::Unit,
        "the echo answers"
    );
    let start = Instant::now();
    let sends = Command::SendLoop {
        target: echo.0,
        n,
        payload,
    };
    anyhow::ensure!(
        b.command(sender, &sends).await? == Reply::Unit,
        "SendLoop failed"
    );
    anyhow::ensure!(
        b.command(sender, &last_call).await? == Reply::Unit,
        "the last call failed"
    );
    Ok(f64::from(n) / start.elapsed().as_secs_f64())
}

pub(super) fn rss_kib() -> anyhow::Result<f64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("no VmRSS")?;
    let kib: f64 = line
        .split_whitespace()
        .nth(1)
        .context("VmRSS value")?
        .parse()?;
    Ok(kib)
}

/// The host pings an echo service `pings` times while `spinners` services
/// spin; the figure is the median round trip (the worst is logged).
pub(super) async fn ping_under_spin(
    b: &BenchNode,
    spinners: u32,
    pings: u32,
) -> anyhow::Result<f64> {
    let target = b.spawn("testkit").await?;
    let prober = b.spawn("testkit").await?;
    // The same pings with nothing spinning, for comparison.
    let idle = ping_times(b, prober, target, pings).await?;
    let mut spinning = Vec::new();
    let mut spins = tokio::task::JoinSet::new();
    for _ in 0..spinners {
        let s = b.spawn("testkit").await?;
        let client = b.node.client();
        spins.spawn(async move { command_via(&client, s, &Command::Spin).await });
        spinning.push(s);
    }
    let times = ping_times(b, prober, target, pings).await?;
    for s in spinning {
        b.node.kill(s);
    }
    while let Some(r) = spins.join_next().await {
        anyhow::ensure!(r?.is_err(), "a spinner answered");
    }
    let tail = |t: &[f64]| (t[t.len() - 1], t[t.len() * 99 / 100]);
    let ((worst, p99), (idle_worst, idle_p99)) = (tail(&times), tail(&idle));
    eprintln!(
        "ping-under-spin: worst {worst:.0} µs, p99 {p99:.0} µs; \
         idle: median {:.0} µs, worst {idle_worst:.0} µs, p99 {idle_p99:.0} µs",
        idle[idle.len() / 2]
    );
    Ok(times[times.len() / 2])
}

/// Round trips (µs, sorted) of `n` sequential calls from service `prober`
/// to service `target`, each timed by the prober: a ping as a service sees
/// it (a client on a thread outside the node would also wait for the OS to
/// give it a CPU that the spinning workers hold).
pub(super) async fn ping_times(
    b: &BenchNode,
    prober: Address,
    target: Address,
    n: u32,
) -> anyhow::Result<Vec<f64>> {
    let command = Command::CallLoopTimed {
        target: target.0,
        n,
        payload: vec![0u8; 16],
    };
    let Reply::Order(times) = b.command(prober, &command).await? else {
        bail!("CallLoopTimed answered something else");
    };
    anyhow::ensure!(times.len() == n as usize, "timed {} of {n}", times.len());
    let mut times: Vec<f64> = times.into_iter().map(f64::from).collect();
    times.sort_by(f64::total_cmp);
    Ok(times)
}

/// What `max-services` reports: the count, or the memory it took.
#[derive(Clone, Copy)]
pub(super) enum ServicesFigure {
    /// Live services that answered a ping.
    Count,
    /// Growth of the process's RSS, in MiB.
    Rss,
    /// RSS per hibernated service, in KiB: the growth from the resident
    /// set alone to all `target` services, over the services added.
    IdleRss,
}

/// Spawns `target` echo services (1,000 per `SpawnMany`) on a node whose
/// pool holds its resident set, the rest hibernated to make room, then
/// pings each one; `figure` says what it reports.
pub(super) async fn max_services(
    b: &BenchNode,
    target: u32,
    figure: ServicesFigure,
) -> anyhow::Result<f64> {
    let spawner = b.spawn("testkit").await?;
    let resident = b.limits.resident_services.min(target);
    let mut alive: Vec<u32> = Vec::new();
    let rss_before = rss_kib()?;
    let mut rss_resident = rss_before;
    while (alive.len() as u32) < target {
        if alive.len() as u32 == resident {
            rss_resident = rss_kib()?;
        }
        let left = if (alive.len() as u32) < resident {
            resident - alive.len() as u32
        } else {
            target - alive.len() as u32
        };
        let n = 1_000.min(left);
        match b
            .command(
                spawner,
                &Command::SpawnMany {
                    module: "echo".into(),
                    n,
                },
            )
            .await
        {
            Ok(Reply::Addresses(a)) => alive.extend(a),
            Ok(r) => bail!("SpawnMany answered {r:?}"),
            Err(e) => {
                eprintln!("max-services: stopped at {} services: {e:#}", alive.len());
                break;
            }
        }
    }
    let rss_all = rss_kib()?;
    for &a in &alive {
        b.client.call(Address(a), vec![1]).await?;
    }
    let maps = std::fs::read_to_string("/proc/self/maps").map_or(0, |m| m.lines().count());
    let grown_mib = (rss_kib()? - rss_before) / 1024.0;
    let added = alive.len().saturating_sub(resident as usize).max(1);
    let idle_kib = (rss_all - rss_resident) / added as f64;
    eprintln!(
        "max-services: {} alive ({} hibernated, {resident} resident slots), RSS grew {grown_mib:.0} \
         MiB, {idle_kib:.2} KiB per service beyond the resident set, {maps} memory maps",
        alive.len(),
        b.node.hibernated_count()
    );
    Ok(match figure {
        // Services of a spawn batch that failed part way are alive too.
        ServicesFigure::Count => b.node.service_count().saturating_sub(1) as f64,
        ServicesFigure::Rss => grown_mib,
        ServicesFigure::IdleRss => idle_kib,
    })
}

/// `wanted` services, or fewer where `vm.max_map_count` cannot map them.
pub(super) fn pool_size(wanted: u32) -> u32 {
    match skyhost::config::services_allowed_by_map_count() {
        Some((allowed, _)) => u32::try_from(allowed.min(u64::from(wanted))).unwrap_or(wanted),
        None => wanted,
    }
}

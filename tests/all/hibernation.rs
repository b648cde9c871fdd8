//! Hibernation (docs/hibernation.md): an idle service gives up its instance
//! and wakes on its next message with its state (or, without a state, its
//! memory), its messages in order; one waiting on a session stays awake; a
//! hibernated service can be killed and upgraded.

use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use skyhost::runtime::kind;
use skyhost::{Address, ServiceInfo};

use crate::support::*;
use crate::upgrade::{count, counted, numbered, version_path};

/// A node whose services hibernate after `ms` idle.
fn node_hibernating_after(ms: u64) -> anyhow::Result<TestNode> {
    let mut config = test_config();
    config.limits.hibernate_after_ms = ms;
    TestNode::with_config(config)
}

/// Tenant `name`'s accounting on `node`.
fn stats_of(node: &TestNode, name: &str) -> anyhow::Result<skyhost::TenantStats> {
    node.node
        .tenant_stats()
        .into_iter()
        .find(|t| t.name == name)
        .with_context(|| format!("tenant {name}"))
}

fn info(node: &TestNode, service: Address) -> anyhow::Result<ServiceInfo> {
    node.node.service_info(service).context("the service lives")
}

/// Waits until `service` is hibernated.
async fn hibernated(node: &TestNode, service: Address) -> anyhow::Result<ServiceInfo> {
    let start = Instant::now();
    loop {
        let i = info(node, service)?;
        if i.state == "hibernated" {
            return Ok(i);
        }
        ensure!(
            start.elapsed() < DEADLINE,
            "{service} did not hibernate: {i:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn send_numbered(node: &TestNode, counter: Address, seqs: std::ops::RangeInclusive<u32>) {
    for seq in seqs {
        node.client
            .send(counter, kind::TEXT, 0, numbered(1, seq))
            .expect("the counter takes messages");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_stateful_service_hibernates_and_wakes_with_its_state() -> anyhow::Result<()> {
    let node = node_hibernating_after(30)?;
    let counter = node.spawn("counter").await?;
    let stateless = node.spawn("testkit").await?;
    send_numbered(&node, counter, 1..=5);
    counted(&node.client, counter, 5).await?;

    let asleep = hibernated(&node, counter).await?;
    ensure!(
        asleep.memory_bytes == 0,
        "a hibernated service holds memory: {asleep:?}"
    );
    ensure!(
        node.node.hibernated_count() >= 1,
        "the node counts no hibernated service"
    );
    // The testkit keeps no state: it hibernates as an image of its memory.
    let imaged = hibernated(&node, stateless).await?;
    ensure!(imaged.memory_bytes == 0, "{imaged:?}");
    ensure!(node.command(stateless, &Command::Count).await? == Reply::Count(0));

    // Messages sent while it sleeps wake it, in order after the earlier ones.
    send_numbered(&node, counter, 6..=8);
    let c = counted(&node.client, counter, 8).await?;
    ensure!(
        (c.version, c.total, c.gaps) == (1, 8, 0),
        "after waking: {c:?}"
    );
    ensure!(c.calls >= 2, "the count of calls was not kept: {c:?}");
    let woken = info(&node, counter)?;
    ensure!(woken.hibernations >= 1, "{woken:?}");
    // It sleeps again once idle, and wakes again.
    hibernated(&node, counter).await?;
    let again = count(&node.client, counter).await?;
    ensure!(again.total == 8 && again.calls == c.calls + 1, "{again:?}");
    node.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_waiting_on_its_timer_stays_awake_until_it_fires() -> anyhow::Result<()> {
    let node = node_hibernating_after(10)?;
    let counter = node.spawn("counter").await?;
    let mut hold = b"h".to_vec();
    hold.extend_from_slice(&300u32.to_le_bytes());
    let mut held = Box::pin(node.client.call_timeout(counter, hold, DEADLINE));
    // Until the timer fires the counter waits on a session of its own: it
    // must not give up its instance (its task lives in it).
    loop {
        tokio::select! {
            answer = &mut held => {
                answer.context("the held call")?;
                break;
            }
            () = tokio::time::sleep(Duration::from_millis(5)) => {
                let i = info(&node, counter)?;
                ensure!(i.state != "hibernated", "hibernated while waiting on its timer: {i:?}");
            }
        }
    }
    drop(held);
    hibernated(&node, counter).await?;
    node.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hibernated_service_can_be_killed_and_upgraded() -> anyhow::Result<()> {
    let node = node_hibernating_after(20)?;
    let upgraded = node.spawn("counter").await?;
    let killed = node.spawn("counter").await?;
    send_numbered(&node, upgraded, 1..=3);
    counted(&node.client, upgraded, 3).await?;
    hibernated(&node, upgraded).await?;
    hibernated(&node, killed).await?;

    let reports = within(
        node.node
            .upgrade(&upgraded.to_string(), &version_path(2), DEADLINE),
    )
    .await??;
    ensure!(reports[0].result.is_ok(), "{reports:?}");
    let c = count(&node.client, upgraded).await?;
    ensure!((c.version, c.total) == (2, 3), "after the upgrade: {c:?}");

    let mut watcher = node.node.client();
    watcher.monitor(killed);
    ensure!(node.node.kill(killed), "no service to kill");
    let notice = within(watcher.recv()).await?.context("an exit notice")?;
    ensure!(
        (notice.kind, notice.source) == (kind::EXIT, killed),
        "{notice:?}"
    );
    ensure!(
        node.client.call(killed, b"g".to_vec()).await.is_err(),
        "a killed service answered"
    );
    node.stop().await;
    Ok(())
}

/// More live services than instance slots: when every slot is taken, the
/// services idle the longest hibernate to make room, so 20,000 echoes live
/// on a pool of 1,000 and each one answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_thousand_services_live_on_a_thousand_slots() -> anyhow::Result<()> {
    const SERVICES: u32 = 20_000;
    let mut config = test_config();
    config.limits.max_services = SERVICES + 100;
    config.limits.resident_services = 1_000;
    // Long enough that only a full pool makes them hibernate.
    config.limits.hibernate_after_ms = 600_000;
    let node = TestNode::with_config(config)?;
    let spawner = node.spawn("testkit").await?;
    let mut echoes = Vec::with_capacity(SERVICES as usize);
    while echoes.len() < SERVICES as usize {
        let spawn = Command::SpawnMany {
            module: "echo".into(),
            n: 1_000,
        };
        match node.command(spawner, &spawn).await? {
            Reply::Addresses(a) => echoes.extend(a.into_iter().map(Address)),
            r => anyhow::bail!("SpawnMany answered {r:?} after {} echoes", echoes.len()),
        }
    }
    ensure!(
        node.node.hibernated_count() >= (SERVICES - 1_000) as usize,
        "{} of {SERVICES} echoes hibernated with 1,000 slots",
        node.node.hibernated_count()
    );
    for (i, &echo) in echoes.iter().enumerate() {
        let payload = u32::try_from(i)?.to_le_bytes().to_vec();
        let answer = node
            .client
            .call_timeout(echo, payload.clone(), DEADLINE)
            .await
            .with_context(|| format!("echo {i} ({echo})"))?;
        ensure!(answer == payload, "echo {i} answered {answer:?}");
    }
    node.stop().await;
    Ok(())
}

/// A name stays with its service through a hibernation (it is the
/// handle's): found while it sleeps, and a call to what it names wakes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hibernated_service_keeps_its_name() -> anyhow::Result<()> {
    let node = node_hibernating_after(10)?;
    let echo = within(node.node.spawn("echo", b".sleeper")).await??;
    hibernated(&node, echo).await?;
    let named = node
        .node
        .query(".sleeper")
        .context("the name while it sleeps")?;
    ensure!(named == echo, "the name points at {named}, not {echo}");
    let answer = node
        .client
        .call_timeout(named, b"hi".to_vec(), DEADLINE)
        .await?;
    ensure!(answer == b"hi", "answered {answer:?}");
    ensure!(info(&node, echo)?.hibernations >= 1);
    node.stop().await;
    Ok(())
}

/// Template spawn (docs/hibernation.md): on a node where nothing
/// hibernates when idle, a second echo with the same (empty) args is born
/// hibernated on the state the first one's pure `init` left: no instance
/// and no memory until its first message, which it answers. An echo
/// spawned with a name registers it in `init` (an import), so it is never
/// born that way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spawn_like_an_earlier_pure_one_is_born_hibernated() -> anyhow::Result<()> {
    let node = TestNode::with_config(test_config())?;
    let first = node.spawn("echo").await?;
    ensure!(info(&node, first)?.state != "hibernated");
    let born = node.spawn("echo").await?;
    let asleep = info(&node, born)?;
    ensure!(
        asleep.state == "hibernated" && asleep.memory_bytes == 0,
        "{asleep:?}"
    );
    ensure!(node.node.template_spawns() == 1);
    let answer = node
        .client
        .call_timeout(born, b"hi".to_vec(), DEADLINE)
        .await?;
    ensure!(answer == b"hi", "answered {answer:?}");
    let awake = info(&node, born)?;
    ensure!(
        awake.state != "hibernated" && awake.memory_bytes > 0,
        "{awake:?}"
    );
    for name in [".first", ".second"] {
        let named = within(node.node.spawn("echo", name.as_bytes())).await??;
        ensure!(info(&node, named)?.state != "hibernated");
        ensure!(
            node.node.query(name) == Some(named),
            "{name} not registered"
        );
    }
    ensure!(node.node.template_spawns() == 1);
    node.stop().await;
    Ok(())
}

/// A module without a state of its own is a template too, as an image of
/// its memory and globals: a second echo of C and JavaScript with the same
/// (empty) args is born hibernated on the image the first one's pure
/// `init` left, and answers; the first, whose image was taken while it
/// served on, answers too (1 MiB, after the second). (Python's `init`
/// asks `wasi:random` for bytes inside its runtime: never a template.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_without_state_is_a_template_as_its_memory() -> anyhow::Result<()> {
    let node = TestNode::with_config(test_config())?;
    let big: Vec<u8> = (0..1 << 20).map(|i| (i % 249) as u8).collect();
    for (i, module) in ["echo_c", "echo_js"].into_iter().enumerate() {
        let first = node.spawn_compiling(module).await?;
        let born = node.spawn(module).await?;
        let asleep = info(&node, born)?;
        ensure!(
            asleep.state == "hibernated" && asleep.memory_bytes == 0,
            "{module}: {asleep:?}"
        );
        ensure!(node.node.template_spawns() == i as u64 + 1, "{module}");
        for (service, payload) in [(born, b"hi".to_vec()), (first, big.clone())] {
            let answer = node
                .client
                .call_timeout(service, payload.clone(), DEADLINE)
                .await?;
            ensure!(answer == payload, "{module}: {service} answered otherwise");
        }
    }
    node.stop().await;
    Ok(())
}

/// A memory image taken as a template leaves the instance that goes on
/// serving as it was: `globals-out` writes the globals' values over the
/// lowest bytes of the memory, and they are written back. The testkit's
/// `low=<n>` puts n there in its (pure) `init`: the first testkit still
/// reads it after its image was taken, and the second, born on the image.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_image_leaves_its_serving_instance_as_it_was() -> anyhow::Result<()> {
    let node = TestNode::with_config(test_config())?;
    let args = b"low=1234567";
    let first = within(node.node.spawn("testkit", args)).await??;
    let born = within(node.node.spawn("testkit", args)).await??;
    ensure!(info(&node, born)?.state == "hibernated", "not a template");
    for kit in [first, born] {
        let low = node.command(kit, &Command::Low).await?;
        ensure!(low == Reply::Count(1_234_567), "{kit}: {low:?}");
    }
    node.stop().await;
    Ok(())
}

/// Multicast across a hibernation: a subscriber whose publishes go to its
/// `handle` hibernates (the subscription is its handle's, not its
/// instance's), and a publish wakes it and is taken. One with a handler of
/// the channel's own (a closure only its instance holds) tells the host to
/// keep its instance (`stay-awake`): asked to hibernate, it stays awake,
/// and its handler takes every publish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hibernated_subscriber_gets_every_publish_and_a_channel_handler_stays_awake()
-> anyhow::Result<()> {
    let node = node_hibernating_after(10)?;
    let publisher = node.spawn("testkit").await?;
    let Reply::Count(channel) = node.command(publisher, &Command::McNew(None)).await? else {
        anyhow::bail!("McNew answered something else");
    };
    let subscribe = |op: u8| {
        let mut request = vec![op];
        request.extend_from_slice(&u32::try_from(channel).expect("a channel id").to_le_bytes());
        request
    };
    let with_handler = node.spawn("counter").await?;
    node.client
        .call_timeout(with_handler, subscribe(b'l'), DEADLINE)
        .await?;
    let plain = node.spawn("counter").await?;
    node.client
        .call_timeout(plain, subscribe(b's'), DEADLINE)
        .await?;
    hibernated(&node, plain).await?;
    // Idle longer than `plain`, it was asked no later; its ask is in its
    // mailbox before this call.
    count(&node.client, with_handler).await?;
    let kept = info(&node, with_handler)?;
    ensure!(
        kept.hibernations == 0,
        "a channel handler hibernated: {kept:?}"
    );

    let publish = Command::McPublishSeq {
        channel: u32::try_from(channel)?,
        tag: 1,
        n: 5,
    };
    ensure!(node.command(publisher, &publish).await? == Reply::Unit);
    ensure!(counted(&node.client, plain, 5).await?.total == 5);
    ensure!(counted(&node.client, with_handler, 5).await?.total == 5);
    ensure!(info(&node, plain)?.hibernations >= 1);
    ensure!(info(&node, with_handler)?.hibernations == 0);
    node.stop().await;
    Ok(())
}

/// A tenant's quotas count its hibernated services: they still count
/// against its service limit (a spawn past it is refused), and hold none
/// of its memory until a message wakes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_counts_its_hibernated_services_but_not_their_memory() -> anyhow::Result<()> {
    use skyhost::config::{TenantConfig, TenantLimits};
    let mut config = test_config();
    config.tenants = vec![TenantConfig {
        limits: TenantLimits {
            max_services: Some(2),
            hibernate_after_ms: Some(10),
            ..Default::default()
        },
        ..TenantConfig::new("few", vec![guest_dir()])
    }];
    let node = TestNode::with_config(config)?;
    let mut counters = Vec::new();
    for _ in 0..2 {
        counters.push(within(node.node.spawn_in("few", "counter", &[])).await??);
    }
    for &c in &counters {
        hibernated(&node, c).await?;
    }
    let asleep = stats_of(&node, "few")?;
    ensure!(
        asleep.services == 2 && asleep.memory_bytes == 0,
        "asleep: {asleep:?}"
    );
    let third = within(node.node.spawn_in("few", "counter", &[])).await?;
    let refused = third.expect_err("a third service in `few`").to_string();
    ensure!(refused.contains("at its limit of 2 services"), "{refused}");
    let client = node.node.client_in("few").context("a client in few")?;
    count(&client, counters[0]).await?;
    let woken = stats_of(&node, "few")?;
    ensure!(
        woken.services == 2 && woken.memory_bytes > 0,
        "one woken: {woken:?}"
    );
    node.stop().await;
    Ok(())
}

/// A wake that fails ends the service and the session that woke it with
/// an error naming why: here the tenant's total memory (2 MiB) holds one
/// counter's instance (1.06 MiB) but not a second, so a counter born
/// hibernated beside an awake one cannot wake. The awake one carries on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wake_past_the_tenant_memory_limit_ends_the_service_with_its_cause() -> anyhow::Result<()>
{
    use skyhost::config::{TenantConfig, TenantLimits};
    let mut config = test_config();
    config.tenants = vec![TenantConfig {
        limits: TenantLimits {
            total_memory_mb: Some(2),
            ..Default::default()
        },
        ..TenantConfig::new("tight", vec![guest_dir()])
    }];
    let node = TestNode::with_config(config)?;
    let awake = within(node.node.spawn_in("tight", "counter", &[])).await??;
    let born = within(node.node.spawn_in("tight", "counter", &[])).await??;
    ensure!(
        info(&node, born)?.state == "hibernated",
        "not born hibernated"
    );
    let client = node.node.client_in("tight").context("a client in tight")?;
    let failed = client
        .call_timeout(born, b"g".to_vec(), DEADLINE)
        .await
        .expect_err("a wake past the tenant's memory");
    let text = failed.to_string();
    ensure!(
        text.contains("waking from hibernation failed") && text.contains("total memory limit"),
        "{text}"
    );
    ensure!(
        node.node.service_info(born).is_none(),
        "the service lives on"
    );
    count(&client, awake).await?;
    node.stop().await;
    Ok(())
}

/// Freed slots that keep the pages their instance wrote (`[limits]
/// slot_keep_resident_kib`) hand each new instance a clean memory: many
/// counters taking turns on a few slots each keep exactly their own count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_taking_turns_on_slots_that_keep_their_pages_keep_their_own_state()
-> anyhow::Result<()> {
    const COUNTERS: u32 = 48;
    let mut config = test_config();
    config.limits.max_services = COUNTERS + 16;
    config.limits.resident_services = 6;
    config.limits.slot_keep_resident_kib = 256;
    // Long enough that only a full pool makes them hibernate.
    config.limits.hibernate_after_ms = 600_000;
    let node = TestNode::with_config(config)?;
    let mut counters = Vec::new();
    for _ in 0..COUNTERS {
        counters.push(node.spawn("counter").await?);
    }
    for round in 0..2 {
        for (i, &counter) in counters.iter().enumerate() {
            let n = u32::try_from(i)? + 1;
            send_numbered(&node, counter, round * n + 1..=(round + 1) * n);
            let want = u64::from((round + 1) * n);
            let c = counted(&node.client, counter, want).await?;
            ensure!(
                (c.total, c.gaps) == (want, 0),
                "counter {i} in round {round}: {c:?}"
            );
        }
    }
    let slept: u32 = counters
        .iter()
        .map(|&c| info(&node, c).map(|i| i.hibernations))
        .sum::<anyhow::Result<u32>>()?;
    ensure!(
        slept >= COUNTERS,
        "the counters hibernated {slept} times on 6 slots"
    );
    node.stop().await;
    Ok(())
}

/// A wake takes an instance made ahead by the node when an earlier wake of
/// the module's services left a worker idle (docs/hibernation.md): the
/// woken service is itself in it (its own address, its memory counted as
/// its own) and answers; instances made ahead hold none of their tenant's
/// memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wake_takes_an_instance_made_ahead_as_its_own() -> anyhow::Result<()> {
    let node = node_hibernating_after(10)?;
    let (a, b) = (node.spawn("testkit").await?, node.spawn("testkit").await?);
    hibernated(&node, a).await?;
    hibernated(&node, b).await?;
    // The first wake of the module makes instances ahead for the next.
    ensure!(node.command(a, &Command::Count).await? == Reply::Count(0));
    let start = Instant::now();
    while node.node.instances_ahead() == 0 {
        ensure!(start.elapsed() < DEADLINE, "no instance was made ahead");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    hibernated(&node, a).await?;
    let asleep = stats_of(&node, "system")?;
    ensure!(
        asleep.memory_bytes == 0,
        "instances made ahead count in their tenant's memory: {asleep:?}"
    );
    let before = node.node.wakes_ahead();
    let who = node.command(b, &Command::WhoAmI).await?;
    ensure!(
        node.node.wakes_ahead() == before + 1,
        "the wake made its own instance"
    );
    let Reply::Bytes(who) = who else {
        anyhow::bail!("WhoAmI answered {who:?}");
    };
    let address = String::from_utf8(who)?;
    ensure!(
        address.ends_with(&format!("/{}", b.0)),
        "{b} answered as {address}"
    );
    let woken = info(&node, b)?;
    ensure!(
        woken.memory_bytes > 0,
        "its memory is not its own: {woken:?}"
    );
    ensure!(stats_of(&node, "system")?.memory_bytes >= woken.memory_bytes);
    node.stop().await;
    Ok(())
}

/// A service with no state of its own (the Rust testkit: no `state`
/// export) hibernates as an image of its memory and wakes with what its
/// memory held: the count of text messages it was sent, again and again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_without_a_state_hibernates_as_its_memory_and_keeps_it() -> anyhow::Result<()> {
    let node = node_hibernating_after(30)?;
    let kit = node.spawn("testkit").await?;
    let mut sent = 0;
    for round in 1..=3u32 {
        for _ in 0..round {
            node.client.send(kit, kind::TEXT, 0, b"hi".to_vec())?;
            sent += 1;
        }
        let start = Instant::now();
        while node.command(kit, &Command::Count).await? != Reply::Count(sent) {
            ensure!(start.elapsed() < DEADLINE, "round {round}: not counted");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let asleep = hibernated(&node, kit).await?;
        ensure!(
            asleep.memory_bytes == 0 && asleep.hibernations >= round,
            "round {round}: {asleep:?}"
        );
        ensure!(
            node.command(kit, &Command::Count).await? == Reply::Count(sent),
            "round {round}: the count in its memory was lost"
        );
    }
    node.stop().await;
    Ok(())
}

/// A service whose state lives in a mutable wasm global of its own, not
/// in its memory (`global_count_c`: the count of text messages it was
/// sent) hibernates as an image of its memory and globals and wakes with
/// the global's value, again and again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_whose_state_is_a_wasm_global_keeps_it_across_hibernations() -> anyhow::Result<()>
{
    let node = node_hibernating_after(30)?;
    let counter = node.spawn("global_count_c").await?;
    let mut sent = 0u32;
    for round in 1..=3u32 {
        for _ in 0..round {
            node.client.send(counter, kind::TEXT, 0, b"one".to_vec())?;
            sent += 1;
        }
        let asleep = hibernated(&node, counter).await?;
        ensure!(
            asleep.memory_bytes == 0 && asleep.hibernations >= round,
            "round {round}: {asleep:?}"
        );
        let count = node
            .client
            .call_timeout(counter, Vec::new(), DEADLINE)
            .await?;
        ensure!(
            count == sent.to_le_bytes(),
            "round {round}: woke counting {count:?}, sent {sent}"
        );
    }
    node.stop().await;
    Ok(())
}

/// `module`'s echo hibernates as an image of its memory (and its core
/// modules' mutable globals), and wakes to answer, again and again, also
/// after its memory grew past its start (a 1 MiB echo). The echo keeps
/// nothing between calls: that what a memory held comes back is the
/// testkit's test above and the conformance suite's while hibernating.
async fn an_echo_hibernates_as_its_memory_and_globals(module: &str) -> anyhow::Result<()> {
    let node = node_hibernating_after(30)?;
    let echo = node.spawn_compiling(module).await?;
    let big: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
    for round in 1..=2u32 {
        let payload = format!("ping {round}").into_bytes();
        ensure!(
            node.client
                .call_timeout(echo, payload.clone(), DEADLINE)
                .await?
                == payload,
            "{module}, round {round}: the echo answered something else"
        );
        let asleep = hibernated(&node, echo).await?;
        ensure!(
            asleep.memory_bytes == 0 && asleep.hibernations >= round,
            "{module}, round {round}: {asleep:?}"
        );
        ensure!(
            node.node.hibernated_bytes() > 0,
            "{module}, round {round}: no image kept"
        );
        ensure!(
            node.client
                .call_timeout(echo, big.clone(), DEADLINE)
                .await?
                == big,
            "{module}, round {round}: the echo of 1 MiB came back different"
        );
    }
    node.stop().await;
    Ok(())
}

/// C (the echo: one memory, one mutable global, no WASI adapter).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_c_service_hibernates_as_its_memory_and_wakes_to_answer() -> anyhow::Result<()> {
    an_echo_hibernates_as_its_memory_and_globals("echo_c").await
}

/// JavaScript (StarlingMonkey: a second mutable global, an i64, beside the
/// stack pointer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_javascript_service_hibernates_as_its_memory_and_globals() -> anyhow::Result<()> {
    an_echo_hibernates_as_its_memory_and_globals("echo_js").await
}

/// Python (componentize-py: libpython's hundreds of GOT globals, the WASI
/// preview-1 adapter's globals).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_service_hibernates_as_its_memory_and_globals() -> anyhow::Result<()> {
    an_echo_hibernates_as_its_memory_and_globals("echo_py").await
}

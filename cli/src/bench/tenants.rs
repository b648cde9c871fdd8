//! Tenant and upgrade workloads: what 100 tenants cost, fairness between
//! busy tenants, and hot-swap pauses under load.

use std::time::{Duration, Instant};

use anyhow::Context;
use skyhost_test_proto::Command;

use super::*;

/// `local-call-rtt` (`calls`) and `local-oneway` (`messages`) in tenant
/// `t0` of a node with 100 tenants, against the same in a fresh node with
/// only `system` (measured before and after, and averaged); the figure is
/// the worse of the two ratios (time per call, time per message).
pub(super) async fn tenant_overhead(
    b: &BenchNode,
    calls: u32,
    messages: u32,
) -> anyhow::Result<f64> {
    let mut base_rtt = 0.0;
    let mut base_rate = 0.0;
    for _ in 0..2 {
        let single = BenchNode::start(b.limits.clone())?;
        base_rtt += local_call_rtt(&single, calls).await? / 2.0;
        base_rate += local_oneway(&single, messages).await? / 2.0;
        single.stop().await;
    }
    let rtt = local_call_rtt(b, calls).await?;
    let rate = local_oneway(b, messages).await?;
    let (rtt_ratio, rate_ratio) = (rtt / base_rtt, base_rate / rate);
    eprintln!(
        "tenant-overhead: call {rtt:.2} µs vs {base_rtt:.2} ({rtt_ratio:.3}), \
         oneway {rate:.0} vs {base_rate:.0} msgs/s ({rate_ratio:.3})"
    );
    Ok(rtt_ratio.max(rate_ratio))
}

/// Tenant `t1`'s ping round trip (host client of `t1` to its echo) while
/// tenant `t0` spins `spinners` services and floods one of its mailboxes;
/// the figure is the median, the worst and the idle median are logged.
pub(super) async fn tenant_fairness(
    b: &BenchNode,
    spinners: u32,
    pings: usize,
) -> anyhow::Result<f64> {
    let quiet = b.node.client_in("t1").context("tenant t1")?;
    let echo = b.node.spawn_in("t1", "echo", &[]).await?;
    let ping = |n: usize| {
        let (quiet, echo) = (&quiet, echo);
        async move {
            let mut times = Vec::with_capacity(n);
            for _ in 0..n {
                let start = Instant::now();
                quiet.call(echo, vec![0u8; 16]).await?;
                times.push(start.elapsed().as_secs_f64() * 1e6);
            }
            times.sort_by(f64::total_cmp);
            anyhow::Ok(times)
        }
    };
    let idle = ping(pings).await?;
    let mut spinning = Vec::new();
    let spin = postcard::to_allocvec(&Command::Spin)?;
    for _ in 0..spinners {
        let s = b.spawn("testkit").await?;
        b.client.send(s, skyhost::kind::REQUEST, 1, spin.clone())?;
        spinning.push(s);
    }
    // The flood: a host client of `t0` keeps one of its mailboxes full
    // (at most 10,000 queued) while the pings run.
    let sink = b.spawn("testkit").await?;
    let stop = tokio_util::sync::CancellationToken::new();
    let flood = {
        let (node, stop) = (b.node.clone(), stop.clone());
        let noisy = node.client_in("t0").context("tenant t0")?;
        tokio::spawn(async move {
            let mut sent = 0u64;
            while !stop.is_cancelled() {
                while node.mailbox_len(sink).unwrap_or(0) < 10_000 {
                    if noisy.send(sink, 0, 0, vec![0u8; 16]).is_ok() {
                        sent += 1;
                    }
                }
                tokio::task::yield_now().await;
            }
            sent
        })
    };
    let times = ping(pings).await;
    stop.cancel();
    let flooded = flood.await?;
    let times = times?;
    for s in spinning {
        b.node.kill(s);
    }
    eprintln!("tenant-fairness: {flooded} messages flooded into tenant t0");
    eprintln!(
        "tenant-fairness: idle median {:.1} µs; under load median {:.1} µs, p99 {:.1} µs, worst {:.1} µs",
        idle[idle.len() / 2],
        times[times.len() / 2],
        times[times.len() * 99 / 100],
        times[times.len() - 1]
    );
    Ok(times[times.len() / 2])
}

/// The `counter` service's two versions, alternately.
pub(super) fn counter_version(i: usize) -> anyhow::Result<std::path::PathBuf> {
    let dir = skyhost::bundled_modules().context("this build has no bundled services")?;
    Ok(dir.join(if i.is_multiple_of(2) {
        "counter_v2.wasm"
    } else {
        "counter.wasm"
    }))
}

/// Upgrades one `counter` `n` times between its two versions; the figure is
/// the median time it handled no message (saving its state, instantiating
/// the new version, loading the state); the worst is logged. The new
/// module is compiled (from the disk cache) before each upgrade starts.
pub(super) async fn upgrade_pause(b: &BenchNode, n: usize) -> anyhow::Result<f64> {
    let counter = b.spawn("counter").await?;
    let target = counter.to_string();
    let mut pauses = Vec::with_capacity(n);
    for i in 0..n {
        let reports = b
            .node
            .upgrade(&target, &counter_version(i)?, Duration::from_secs(5))
            .await?;
        let upgraded = reports.into_iter().next().context("one report")?.result?;
        pauses.push(upgraded.pause.as_secs_f64() * 1e6);
    }
    pauses.sort_by(f64::total_cmp);
    eprintln!(
        "upgrade-pause: worst {:.1} µs of {n}",
        pauses[pauses.len() - 1]
    );
    Ok(pauses[pauses.len() / 2])
}

/// A testkit sends `messages` to a `counter`, once untouched and once while
/// the counter is upgraded every 100 ms; the figure is the second rate
/// over the first.
pub(super) async fn upgrade_throughput(b: &BenchNode, messages: u32) -> anyhow::Result<f64> {
    let mut rates = Vec::with_capacity(2);
    for upgrading in [false, true] {
        let counter = b.spawn("counter").await?;
        let sender = b.spawn("testkit").await?;
        let target = counter.to_string();
        let send = postcard::to_allocvec(&Command::SendLoop {
            target: counter.0,
            n: messages,
            payload: vec![9, 1, 0, 0, 0],
        })?;
        let start = Instant::now();
        let sending = {
            let client = b.node.client();
            tokio::spawn(async move { client.call(sender, send).await })
        };
        let stop = tokio_util::sync::CancellationToken::new();
        // Upgrades on their own task, every 100 ms from the first send.
        let upgrader = {
            let (node, stop) = (b.node.clone(), stop.clone());
            tokio::spawn(async move {
                let mut upgrades = 0;
                if !upgrading {
                    return anyhow::Ok(upgrades);
                }
                let mut tick = tokio::time::interval_at(
                    tokio::time::Instant::now() + Duration::from_millis(100),
                    Duration::from_millis(100),
                );
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tick.tick() => {}
                    }
                    let reports = node
                        .upgrade(&target, &counter_version(upgrades)?, Duration::from_secs(5))
                        .await?;
                    for r in reports {
                        r.result?;
                    }
                    upgrades += 1;
                }
                anyhow::Ok(upgrades)
            })
        };
        loop {
            let got = b.client.call(counter, b"g".to_vec()).await?;
            let total = got
                .get(1..9)
                .and_then(|t| <[u8; 8]>::try_from(t).ok())
                .map(u64::from_le_bytes)
                .context("counter answer")?;
            if total >= u64::from(messages) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let rate = f64::from(messages) / start.elapsed().as_secs_f64();
        stop.cancel();
        let upgrades = upgrader.await??;
        sending.await??;
        if upgrading {
            eprintln!(
                "upgrade-throughput: {:.0} msgs/s never upgraded, {rate:.0} msgs/s with {upgrades} upgrades",
                rates[0]
            );
        }
        rates.push(rate);
    }
    Ok(rates[1] / rates[0])
}

//! The example game (examples/game) on real processes started by
//! `skyhost fleet up`, found through a real etcd, driven by this process
//! as a cluster node of its own.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use serde::Serialize;
use serde::de::DeserializeOwned;
use skyhost::cluster::proto::Target;
use skyhost::config::{ClusterNodeConfig, TenantConfig};
use skyhost::{Client, Node};

use crate::support::{DEADLINE, Proc, eventually, test_config, within};

use game_proto::{DataRequest, Entered, LoginRequest, Outcome, PlayerRequest, Record};

const PLAYERS: u64 = 1_000;

/// The example fleet, copied with this test's etcd and module directory.
fn fleet_file(dir: &Path, etcd: &str) -> anyhow::Result<PathBuf> {
    let modules = crate::support::guest_dir().display().to_string();
    Ok(skyhost_cli::fleet::copy_with(
        &skyhost_cli::fleet::example_game(),
        dir,
        Some(etcd),
        &[("modules", &modules)],
    )?)
}

/// Runs `skyhost fleet <action> <file>` to its end; its stdout.
fn fleet(action: &str, file: &Path) -> anyhow::Result<String> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_skyhost"))
        .args(["fleet", action])
        .arg(file)
        .env_remove("RUST_LOG")
        .output()?;
    ensure!(
        out.status.success(),
        "fleet {action}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A cluster call from the driver, decoded; every call has a deadline, so
/// a hung player fails the test instead of hanging it.
async fn ask<Req: Serialize, Resp: DeserializeOwned>(
    client: &Client,
    node: &str,
    target: Target,
    req: &Req,
) -> anyhow::Result<Resp> {
    let payload = postcard::to_allocvec(req)?;
    let answer = tokio::time::timeout(
        Duration::from_secs(10),
        client.cluster_call(node, target, payload, None),
    )
    .await
    .with_context(|| format!("a call to {node} hung"))??;
    Ok(postcard::from_bytes(&answer)?)
}

async fn to_login<Resp: DeserializeOwned>(
    client: &Client,
    req: LoginRequest,
) -> anyhow::Result<Resp> {
    ask(client, "login1", Target::Name("login".into()), &req).await
}

async fn player<Resp: DeserializeOwned>(
    client: &Client,
    at: &Entered,
    req: &PlayerRequest,
) -> anyhow::Result<Resp> {
    ask(client, &at.node, Target::Address(at.player), req).await
}

/// Runs `f` for every player, 32 at a time.
async fn for_all<T, F, Fut>(players: &[(u64, Entered)], f: F) -> anyhow::Result<Vec<T>>
where
    T: Send + 'static,
    F: Fn(u64, Entered) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>> + Send + 'static,
{
    let limit = Arc::new(tokio::sync::Semaphore::new(32));
    let mut tasks = tokio::task::JoinSet::new();
    for (i, (uid, at)) in players.iter().enumerate() {
        let permit = limit.clone().acquire_owned().await?;
        let job = f(*uid, at.clone());
        tasks.spawn(async move {
            let r = job.await;
            drop(permit);
            (i, r)
        });
    }
    let mut out: Vec<Option<T>> = (0..players.len()).map(|_| None).collect();
    while let Some(done) = tasks.join_next().await {
        let (i, r) = done?;
        out[i] = Some(r?);
    }
    Ok(out.into_iter().flatten().collect())
}

/// Every warning and error line in the fleet's node logs under `dir`.
fn fleet_warnings(dir: &Path) -> String {
    let mut lines = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "log") {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            for line in text
                .lines()
                .filter(|l| l.contains("WARN") || l.contains("ERROR"))
            {
                lines.push(format!("{}: {line}", path.display()));
            }
        }
    }
    lines.join("\n")
}

/// The pid of fleet node `name`, from the state `fleet up` recorded.
fn pid_of(file: &Path, name: &str) -> anyhow::Result<u32> {
    skyhost_cli::fleet::load_state(file)?
        .iter()
        .find(|i| i.name == name)
        .map(|i| i.ready.pid)
        .with_context(|| format!("no node {name} in the fleet's state"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_game_runs_on_a_fleet_and_survives_a_battle_node_and_a_data_restart()
-> anyhow::Result<()> {
    let etcd = crate::support::etcd()?;
    let url = etcd.url("game-test");
    let dir = tempfile::tempdir()?;
    let file = fleet_file(dir.path(), &url)?;
    let table = fleet("up", &file)?;
    println!("{table}");
    for name in [
        "data1", "chat1", "battle1", "battle2", "game1", "game2", "login1",
    ] {
        ensure!(table.contains(name), "{name} missing from\n{table}");
    }

    // This process drives the players, as a node of the game's tenant.
    let mut cluster = ClusterNodeConfig::new("driver", "skyhost game example");
    cluster.listen = Some("127.0.0.1:0".into());
    cluster.discovery = Some(url.clone());
    let mut config = test_config();
    config.cluster = Some(cluster);
    config
        .tenants
        .push(TenantConfig::new("game", vec![crate::support::guest_dir()]));
    let node = within(Node::launch(&config)).await?.context("driver")?;
    let client = Arc::new(node.client_in("game").context("the game tenant")?);
    // Register and log in 1,000 players (the first waits for the fleet to
    // have found itself: login, data and both game nodes).
    let start = std::time::Instant::now();
    loop {
        let probe = LoginRequest::Register {
            uid: 0,
            name: "probe".into(),
            password: "pw".into(),
        };
        let r = to_login::<Result<(), String>>(&client, probe).await;
        if matches!(r, Ok(Ok(()))) {
            break;
        }
        ensure!(
            start.elapsed() < DEADLINE,
            "the fleet never served a login: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eventually("both game nodes in the game group", || {
        node.cluster_table()
            .is_some_and(|t| t.get("game1").is_some() && t.get("game2").is_some())
    })
    .await?;
    let uids: Vec<u64> = (1..=PLAYERS).collect();
    let mut players: Vec<(u64, Entered)> = Vec::new();
    let logins = std::time::Instant::now();
    for chunk in uids.chunks(100) {
        let mut tasks = tokio::task::JoinSet::new();
        for &uid in chunk {
            let client = client.clone();
            tasks.spawn(async move {
                let password = format!("secret-{uid}");
                let register = LoginRequest::Register {
                    uid,
                    name: format!("player{uid}"),
                    password: password.clone(),
                };
                to_login::<Result<(), String>>(&client, register)
                    .await?
                    .map_err(anyhow::Error::msg)?;
                let entered = to_login::<Result<Entered, String>>(
                    &client,
                    LoginRequest::Login { uid, password },
                )
                .await?;
                anyhow::Ok((uid, entered.map_err(anyhow::Error::msg)?))
            });
        }
        while let Some(r) = tasks.join_next().await {
            players.push(r??);
        }
    }
    players.sort_by_key(|(uid, _)| *uid);
    println!(
        "{PLAYERS} registrations and logins in {:?}",
        logins.elapsed()
    );
    let per_node = players.iter().fold(HashMap::new(), |mut m, (_, at)| {
        *m.entry(at.node.clone()).or_insert(0u32) += 1;
        m
    });
    ensure!(per_node.len() == 2, "players on {per_node:?}");
    // A wrong password is refused; logging in again finds the same player.
    let wrong = to_login::<Result<Entered, String>>(
        &client,
        LoginRequest::Login {
            uid: 1,
            password: "nope".into(),
        },
    )
    .await?;
    ensure!(wrong.is_err(), "{wrong:?}");
    let again = to_login::<Result<Entered, String>>(
        &client,
        LoginRequest::Login {
            uid: 1,
            password: "secret-1".into(),
        },
    )
    .await?
    .map_err(anyhow::Error::msg)?;
    ensure!(again.player == players[0].1.player && again.node == players[0].1.node);

    // World chat: 10 lines from 10 players reach every player exactly once.
    for (i, (_, at)) in players.iter().take(10).enumerate() {
        let said: Result<(), String> = player(
            &client,
            at,
            &PlayerRequest::Chat {
                id: i as u64 + 1,
                text: format!("hello from {i}"),
            },
        )
        .await?;
        said.map_err(anyhow::Error::msg)?;
    }
    let heard = for_all(&players, |_, at| {
        let client = client.clone();
        async move {
            let start = std::time::Instant::now();
            loop {
                let log: Vec<(u64, u64)> = player(&client, &at, &PlayerRequest::ChatLog).await?;
                if log.len() >= 10 || start.elapsed() > DEADLINE {
                    return anyhow::Ok(log);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    })
    .await?;
    for (log, (uid, at)) in heard.iter().zip(&players) {
        let mut ids: Vec<u64> = log.iter().map(|(id, _)| *id).collect();
        ids.sort_unstable();
        ensure!(
            ids == (1..=10).collect::<Vec<u64>>(),
            "player {uid} (on {}) heard {ids:?}; the fleet's warnings:\n{}",
            at.node,
            fleet_warnings(dir.path())
        );
    }

    // Teams through the cluster-wide team service, then a battle each.
    let sizes = for_all(&players, |uid, at| {
        let client = client.clone();
        async move {
            let r: Result<u32, String> = player(
                &client,
                &at,
                &PlayerRequest::JoinTeam(format!("team{}", uid % 50)),
            )
            .await?;
            r.map_err(anyhow::Error::msg)
        }
    })
    .await?;
    ensure!(
        sizes.iter().all(|&s| (1..=20).contains(&s)),
        "team sizes {sizes:?}"
    );
    let fights = for_all(&players, |_, at| {
        let client = client.clone();
        async move {
            let r: Result<Outcome, String> = player(&client, &at, &PlayerRequest::Fight).await?;
            r.map_err(anyhow::Error::msg)
        }
    })
    .await?;
    let on_battle2 = fights.iter().filter(|o| o.node == "battle2").count();
    ensure!(
        on_battle2 > 0 && on_battle2 < fights.len(),
        "battles not spread: {on_battle2} of {} on battle2",
        fights.len()
    );
    ensure!(fights.iter().any(|o| o.won && o.xp > 0));

    // kill -9 of battle1 while 200 players fight: each fight ends (won,
    // lost, or an error naming the battle), none hangs; later fights all go
    // to battle2.
    let status = fleet("status", &file)?;
    ensure!(
        status.lines().skip(1).all(|l| l.contains(" up ")),
        "every node runs:\n{status}"
    );
    let battle1 = pid_of(&file, "battle1")?;
    let fighters: Vec<(u64, Entered)> = players.iter().take(200).cloned().collect();
    let fighting = {
        let client = client.clone();
        tokio::spawn(async move {
            for_all(&fighters, |_, at| {
                let client = client.clone();
                async move {
                    let mut ended = Vec::new();
                    for _ in 0..5 {
                        let r: Result<Outcome, String> =
                            player(&client, &at, &PlayerRequest::Fight).await?;
                        ended.push(r);
                    }
                    anyhow::Ok(ended)
                }
            })
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    crate::support::signal_pid(battle1, "KILL");
    let ended = within(fighting).await???;
    let failed = ended.iter().flatten().filter(|r| r.is_err()).count();
    println!(
        "{failed} of {} fights failed around kill -9 of battle1",
        ended.len() * 5
    );
    for r in ended.iter().flatten() {
        if let Err(e) = r {
            ensure!(e.contains("battle"), "{e}");
        }
    }
    let after = for_all(&players[..100], |_, at| {
        let client = client.clone();
        async move {
            let r: Result<Outcome, String> = player(&client, &at, &PlayerRequest::Fight).await?;
            r.map_err(anyhow::Error::msg)
        }
    })
    .await?;
    ensure!(after.iter().all(|o| o.node == "battle2"));

    // The data node, killed and started again, still has every record.
    let data1 = pid_of(&file, "data1")?;
    let records_before: Vec<Record> = for_all(&players, |_, at| {
        let client = client.clone();
        async move { player(&client, &at, &PlayerRequest::Record).await }
    })
    .await?;
    crate::support::signal_pid(data1, "KILL");
    let data_file = skyhost_cli::fleet::run_dir(&file).join("data1.toml");
    let mut data = Proc::start([Path::new("run"), &data_file]);
    data.wait_for("published and watching");
    for (uid, _) in &players {
        let start = std::time::Instant::now();
        let stored: Option<Record> = loop {
            match ask(
                &client,
                "data1",
                Target::Name("data".into()),
                &DataRequest::Load(*uid),
            )
            .await
            {
                Ok(r) => break r,
                Err(e) if start.elapsed() < DEADLINE => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => bail!("data1 never answered after its restart: {e:#}"),
            }
        };
        let before = &records_before[(*uid - 1) as usize];
        ensure!(
            stored.as_ref() == Some(before),
            "player {uid}: {stored:?} != {before:?}"
        );
    }

    node.shutdown().await;
    fleet("down", &file)?;
    data.signal("INT");
    ensure!(data.wait_exit().success(), "{}", data.log());
    drop(etcd);
    Ok(())
}

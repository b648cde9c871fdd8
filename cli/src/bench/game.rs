//! The example game's workloads: the fleet of `examples/game` (real
//! processes found through a real etcd), driven by players simulated in
//! this process, which joins the cluster as a node of the game's tenant.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use game_proto::{Entered, LoginRequest, Outcome, PlayerRequest};
use serde::Serialize;
use serde::de::DeserializeOwned;
use skyhost::cluster::proto::Target;
use skyhost::config::{ClusterNodeConfig, TenantConfig};
use skyhost::{Client, Node, NodeConfig};
use skyhost_cli::fleet;
use skyhost_cli::tools::Etcd;

/// Players a driver keeps in flight at once.
const IN_FLIGHT: usize = 200;

/// A running game fleet and its driver.
struct Game {
    _etcd: Etcd,
    _dir: tempfile::TempDir,
    file: std::path::PathBuf,
    driver: Node,
    client: Arc<Client>,
}

/// A cluster call from the driver, decoded; 30 s at most.
async fn ask<Req: Serialize, Resp: DeserializeOwned>(
    client: &Client,
    node: &str,
    target: Target,
    req: &Req,
) -> anyhow::Result<Resp> {
    let payload = postcard::to_allocvec(req)?;
    let answer = tokio::time::timeout(
        Duration::from_secs(30),
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

/// Runs `f` on each of `items`, [`IN_FLIGHT`] at a time, in order.
async fn each<I, T, F, Fut>(items: Vec<I>, f: F) -> anyhow::Result<Vec<T>>
where
    T: Send + 'static,
    F: Fn(I) -> Fut,
    Fut: Future<Output = anyhow::Result<T>> + Send + 'static,
{
    let limit = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
    let mut tasks = tokio::task::JoinSet::new();
    let n = items.len();
    for (i, item) in items.into_iter().enumerate() {
        let permit = limit.clone().acquire_owned().await?;
        let job = f(item);
        tasks.spawn(async move {
            let r = job.await;
            drop(permit);
            (i, r)
        });
    }
    let mut out: Vec<Option<T>> = (0..n).map(|_| None).collect();
    while let Some(done) = tasks.join_next().await {
        let (i, r) = done?;
        out[i] = Some(r?);
    }
    Ok(out.into_iter().flatten().collect())
}

impl Game {
    async fn up() -> anyhow::Result<Game> {
        let tools = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/tmp/tools");
        let etcd = Etcd::start(skyhost_cli::tools::debian_tool(
            "etcd",
            "etcd-server",
            &tools,
        )?)?;
        let dir = tempfile::tempdir()?;
        let modules = skyhost::bundled_modules().context("this build has no bundled services")?;
        let file = fleet::copy_with(
            &fleet::example_game(),
            dir.path(),
            Some(&etcd.url("bench")),
            &[("modules", &modules.display().to_string())],
        )?;
        let exe = std::env::current_exe()?;
        let up = file.clone();
        tokio::task::spawn_blocking(move || fleet::up(&up, &exe, Duration::from_secs(60)))
            .await??;
        let mut cluster = ClusterNodeConfig::new("driver", "skyhost game example");
        cluster.listen = Some("127.0.0.1:0".into());
        cluster.discovery = Some(etcd.url("bench"));
        let config = NodeConfig {
            module_paths: vec![modules.clone()],
            cluster: Some(cluster),
            tenants: vec![TenantConfig::new("game", vec![modules])],
            ..NodeConfig::default()
        };
        let driver = Node::launch(&config).await?;
        let client = Arc::new(driver.client_in("game").context("the game tenant")?);
        let game = Game {
            _etcd: etcd,
            _dir: dir,
            file,
            driver,
            client,
        };
        // Ready when a login goes through every node it needs.
        let start = Instant::now();
        loop {
            let probe = LoginRequest::Register {
                uid: 0,
                name: "probe".into(),
                password: "probe".into(),
            };
            if let Ok(Ok(())) = to_login::<Result<(), String>>(&game.client, probe).await {
                break;
            }
            if start.elapsed() > Duration::from_secs(30) {
                game.down().await?;
                bail!("the game fleet served no login within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(game)
    }

    async fn down(self) -> anyhow::Result<()> {
        self.driver.shutdown().await;
        let file = self.file.clone();
        tokio::task::spawn_blocking(move || fleet::down(&file, Duration::from_secs(10))).await??;
        Ok(())
    }

    /// Registers players `1..=n` (untimed).
    async fn register(&self, n: u64) -> anyhow::Result<()> {
        let client = self.client.clone();
        each((1..=n).collect(), move |uid| {
            let client = client.clone();
            async move {
                let req = LoginRequest::Register {
                    uid,
                    name: format!("player{uid}"),
                    password: format!("secret-{uid}"),
                };
                to_login::<Result<(), String>>(&client, req)
                    .await?
                    .map_err(anyhow::Error::msg)
            }
        })
        .await?;
        Ok(())
    }

    /// Logs players `1..=n` in; where each one lives.
    async fn login(&self, n: u64) -> anyhow::Result<Vec<Entered>> {
        let client = self.client.clone();
        each((1..=n).collect(), move |uid| {
            let client = client.clone();
            async move {
                let req = LoginRequest::Login {
                    uid,
                    password: format!("secret-{uid}"),
                };
                to_login::<Result<Entered, String>>(&client, req)
                    .await?
                    .map_err(anyhow::Error::msg)
            }
        })
        .await
    }
}

/// Logins per second of `players` registered players (10,000 in the bench).
pub(super) async fn logins(players: u64) -> anyhow::Result<f64> {
    let game = Game::up().await?;
    let measured = async {
        game.register(players).await?;
        let start = Instant::now();
        let entered = game.login(players).await?;
        let rate = entered.len() as f64 / start.elapsed().as_secs_f64();
        anyhow::Ok(rate)
    }
    .await;
    game.down().await?;
    measured
}

/// `lines` world chat lines from online players, each heard by all
/// `players`: the median time from a line's publish to its last delivery,
/// in ms (the P99 goes to stderr).
pub(super) async fn chat_fanout(players: u64, lines: u64) -> anyhow::Result<f64> {
    let game = Game::up().await?;
    let measured = async {
        game.register(players).await?;
        let entered = game.login(players).await?;
        let client = game.client.clone();
        for id in 1..=lines {
            let speaker = &entered[(id as usize * 7919) % entered.len()];
            let said: Result<(), String> = ask(
                &client,
                &speaker.node,
                Target::Address(speaker.player),
                &PlayerRequest::Chat {
                    id,
                    text: format!("line {id}"),
                },
            )
            .await?;
            said.map_err(anyhow::Error::msg)?;
            // Lines apart, so each one's fan-out is measured on its own.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let logs = each(entered, move |at| {
            let client = client.clone();
            async move {
                let start = Instant::now();
                loop {
                    let log: Vec<(u64, u64)> = ask(
                        &client,
                        &at.node,
                        Target::Address(at.player),
                        &PlayerRequest::ChatLog,
                    )
                    .await?;
                    if log.len() as u64 >= lines || start.elapsed() > Duration::from_secs(30) {
                        return anyhow::Ok(log);
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        })
        .await?;
        // Each line's last delivery, over every player.
        let mut last = vec![0u64; lines as usize];
        for log in &logs {
            ensure!(
                log.len() as u64 == lines,
                "a player heard {} of {lines} lines",
                log.len()
            );
            for &(id, delay_us) in log {
                let slot = &mut last[(id - 1) as usize];
                *slot = (*slot).max(delay_us);
            }
        }
        last.sort_unstable();
        let p99 = last[(last.len() * 99 / 100).min(last.len() - 1)];
        eprintln!(
            "game-chat-fanout: P99 {:.2} ms to {players} players",
            p99 as f64 / 1000.0
        );
        anyhow::Ok(last[last.len() / 2] as f64 / 1000.0)
    }
    .await;
    game.down().await?;
    measured
}

/// The round trip of a fight, in ms, once every player joined a team:
/// driver → player (game node) → a
/// battle service (group `battle`, least pending; a battle is 5 ms of game
/// time) → the player saves its record → driver; the median of `fights`
/// fights, one at a time, by `players` players in turn.
pub(super) async fn battle_rtt(players: u64, fights: u64) -> anyhow::Result<f64> {
    let game = Game::up().await?;
    let measured = async {
        game.register(players).await?;
        let entered = game.login(players).await?;
        // Each player joins a team first (through the cluster-wide team service).
        let client = game.client.clone();
        each(entered.clone(), move |at| {
            let client = client.clone();
            async move {
                let team = format!("team{}", at.player % 10);
                let joined: Result<u32, String> = ask(
                    &client,
                    &at.node,
                    Target::Address(at.player),
                    &PlayerRequest::JoinTeam(team),
                )
                .await?;
                joined.map_err(anyhow::Error::msg)
            }
        })
        .await?;
        let mut times = Vec::with_capacity(fights as usize);
        for i in 0..fights {
            let at = &entered[(i % players) as usize];
            let start = Instant::now();
            let outcome: Result<Outcome, String> = ask(
                &game.client,
                &at.node,
                Target::Address(at.player),
                &PlayerRequest::Fight,
            )
            .await?;
            outcome.map_err(anyhow::Error::msg)?;
            times.push(start.elapsed());
        }
        times.sort_unstable();
        let p99 = times[(times.len() * 99 / 100).min(times.len() - 1)];
        eprintln!("game-battle-rtt: P99 {:.2} ms", p99.as_secs_f64() * 1000.0);
        anyhow::Ok(times[times.len() / 2].as_secs_f64() * 1000.0)
    }
    .await;
    game.down().await?;
    measured
}

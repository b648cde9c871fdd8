//! The control address as an operator console: list, stat, mem, kill,
//! spawn and ping answer quickly on a busy node; a wrong secret is refused;
//! call and send poke a service.

use std::time::{Duration, Instant};

use skyhost::config::ControlConfig;
use skyhost::control::proto::Answer;

use crate::support::*;

const SECRET: &str = "console secret";

async fn ask(control: &str, command: &str) -> (Answer, Duration) {
    let start = Instant::now();
    let answer = within(skyhost::control::request(control, SECRET, command))
        .await
        .expect("in time")
        .expect("the node answers");
    (answer, start.elapsed())
}

fn lines(answer: Answer) -> Vec<String> {
    match answer {
        Answer::Ok(lines) => lines,
        Answer::Error(e) => panic!("console error: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_answers_within_100_ms_while_services_spin_and_a_mailbox_is_full()
-> anyhow::Result<()> {
    let mut config = test_config();
    config.control = Some(ControlConfig::new(SECRET));
    let node = within(skyhost::Node::launch(&config)).await??;
    within(skyhost::control::serve(&node, &config)).await??;
    let control = node.control_address().expect("control address").to_string();
    let client = node.client();
    let spin = postcard::to_allocvec(&Command::Spin)?;
    let mut spinners = Vec::new();
    for _ in 0..16 {
        let s = within(node.spawn("testkit", &[])).await??;
        client.send(s, skyhost::kind::REQUEST, 1, spin.clone())?;
        spinners.push(s);
    }
    // A spinning service never takes its messages: its mailbox fills up.
    let full = spinners[0];
    for _ in 0..1_000_000 {
        client.send(full, 0, 0, vec![1])?;
    }
    let idle = within(node.spawn("testkit", b"name=.idle")).await??;

    let (list, took) = ask(&control, "list").await;
    let list = lines(list);
    assert!(took < Duration::from_millis(100), "list took {took:?}");
    assert!(
        list.iter()
            .any(|l| l.starts_with(&idle.to_string()) && l.contains("names=.idle")),
        "{list:?}"
    );
    assert!(
        list.iter().any(|l| l.starts_with(&full.to_string())
            && l.contains("mailbox=1000000")
            && l.contains("running")),
        "{list:?}"
    );

    let (stat, took) = ask(&control, &format!("stat {full}")).await;
    let stat = lines(stat);
    assert!(took < Duration::from_millis(100), "stat took {took:?}");
    assert!(
        stat.contains(&"mailbox_peak 1000000".to_string()),
        "{stat:?}"
    );
    assert!(stat.contains(&"module testkit".to_string()), "{stat:?}");

    let (ping, took) = ask(&control, &format!("ping {idle}")).await;
    let ping = lines(ping);
    assert!(took < Duration::from_millis(100), "ping took {took:?}");
    assert!(
        ping[0].starts_with(&format!("pong from {idle}")),
        "{ping:?}"
    );
    let (late, _) = ask(&control, &format!("ping {full}")).await;
    assert!(
        matches!(&late, Answer::Error(e) if e.contains("timed out")),
        "a spinning service cannot pick a ping up: {late:?}"
    );

    let (kill, took) = ask(&control, &format!("kill {}", spinners[1])).await;
    assert!(took < Duration::from_millis(100), "kill took {took:?}");
    assert_eq!(lines(kill), vec![format!("killed {}", spinners[1])]);
    within(async {
        while node.service_info(spinners[1]).is_some() {
            tokio::task::yield_now().await;
        }
    })
    .await?;
    let (again, _) = ask(&control, &format!("kill {}", spinners[1])).await;
    assert_eq!(again, Answer::Error(format!("no service {}", spinners[1])));

    // A service waiting on a timer shows the session it waits on.
    let sleep = Command::SleepThenEcho {
        ms: 60_000,
        payload: vec![],
    };
    let _pending = client.start_call(idle, postcard::to_allocvec(&sleep)?)?;
    within(async {
        loop {
            let (stat, _) = ask(&control, &format!("stat {idle}")).await;
            if lines(stat).contains(&"awaiting 1".to_string()) {
                return;
            }
            tokio::task::yield_now().await;
        }
    })
    .await?;

    let (netstat, _) = ask(&control, "netstat").await;
    assert_eq!(
        lines(netstat),
        Vec::<String>::new(),
        "a single node has no links"
    );
    let (mem, _) = ask(&control, "mem").await;
    let mem = lines(mem);
    assert!(
        mem.last().is_some_and(|l| l.starts_with("total ")),
        "{mem:?}"
    );
    let (spawned, _) = ask(&control, "spawn echo").await;
    let spawned = lines(spawned);
    assert!(spawned[0].starts_with("started :"), "{spawned:?}");
    let (missing, _) = ask(&control, "spawn nothing-here").await;
    assert!(matches!(missing, Answer::Error(e) if e.contains("not found")));

    let refused = skyhost::control::request(&control, "wrong", "list").await?;
    assert!(
        matches!(&refused, Answer::Error(e) if e.contains("not authenticated")),
        "{refused:?}"
    );

    // JSON mode, as a script would drive it.
    let json = json_exchange(&control, &["json", "list", "stat :ffffff00"]).await?;
    assert_eq!(json[0]["ok"], true);
    assert_eq!(json[1]["ok"], true);
    assert!(json[1]["lines"].as_array().is_some_and(|l| !l.is_empty()));
    assert_eq!(json[2]["ok"], false);
    assert!(
        json[2]["error"]
            .as_str()
            .is_some_and(|e| e.contains("no service"))
    );

    drop(client);
    within(node.shutdown()).await?;
    Ok(())
}

/// Authenticates, sends `commands` one per line, and reads one JSON answer
/// per command after `json` (the answer to `auth` and `json` included).
async fn json_exchange(control: &str, commands: &[&str]) -> anyhow::Result<Vec<serde_json::Value>> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let stream = tokio::net::TcpStream::connect(control).await?;
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    write
        .write_all(format!("auth {SECRET}\n").as_bytes())
        .await?;
    assert_eq!(lines.next_line().await?.as_deref(), Some("ok"));
    let mut answers = Vec::new();
    for c in commands {
        write.write_all(format!("{c}\n").as_bytes()).await?;
        let line = within(lines.next_line()).await??.expect("an answer");
        answers.push(serde_json::from_str(&line)?);
    }
    Ok(answers)
}

/// `call` and `send` reach a service by address or by name, from the
/// tenant named before a `/` (`system` without one), with the rest of the
/// line as the payload: `call` prints the answer, and a name the tenant
/// does not have, or a service that is gone, is an error naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_and_send_poke_a_service_from_the_console() -> anyhow::Result<()> {
    let mut config = test_config();
    config.control = Some(ControlConfig::new(SECRET));
    let node = within(skyhost::Node::launch(&config)).await??;
    within(skyhost::control::serve(&node, &config)).await??;
    let control = node.control_address().expect("control address").to_string();
    let echo = within(node.spawn("echo", b".echo")).await??;
    let kit = within(node.spawn("testkit", b"name=.kit")).await??;

    let (answer, _) = ask(&control, "call .echo hello, world").await;
    assert_eq!(lines(answer), vec!["hello, world".to_string()]);
    let (answer, _) = ask(&control, &format!("call system/{echo} by address")).await;
    assert_eq!(lines(answer), vec!["by address".to_string()]);

    let (answer, _) = ask(&control, "send .kit one").await;
    assert_eq!(lines(answer), vec![format!("sent to {kit}")]);
    let client = node.client();
    let counted = async {
        loop {
            let reply = command_via(&client, kit, &Command::Count).await;
            if reply == Ok(Reply::Count(1)) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    };
    within(counted).await?;

    let (answer, _) = ask(&control, "call .nobody x").await;
    assert_eq!(
        answer,
        Answer::Error("no service named `.nobody` in tenant `system`".into())
    );
    let (answer, _) = ask(&control, "call blue/.echo x").await;
    assert_eq!(
        answer,
        Answer::Error("no tenant `blue` on this node".into())
    );
    assert!(node.kill(echo));
    let gone = async {
        while node.service_info(echo).is_some() {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    };
    within(gone).await?;
    let (answer, _) = ask(&control, &format!("call {echo} x")).await;
    let Answer::Error(error) = answer else {
        panic!("a call to a dead service answered");
    };
    assert!(error.starts_with(&format!("call {echo}: ")), "{error}");
    within(node.shutdown()).await?;
    Ok(())
}

//! Cluster groups: members on several nodes, calls picked by round robin,
//! consistent hashing and least pending, and members that go.

use std::collections::HashMap;
use std::time::Duration;

use skyhost::{Address, CallError, ErrorCause};

use crate::support::{Command, Reply, TestNode, eventually};

const SECRET: &str = "groups test secret";

async fn launch(name: &str) -> anyhow::Result<TestNode> {
    crate::support::cluster_node(name, SECRET, |_| {}).await
}

/// Nodes that know each other by a reloaded table.
async fn cluster_of(names: &[&str]) -> anyhow::Result<Vec<TestNode>> {
    let mut nodes = Vec::new();
    for n in names {
        nodes.push(launch(n).await?);
    }
    let table: String = names
        .iter()
        .zip(&nodes)
        .map(|(n, t)| format!("{n} = \"{}\"\n", t.node.cluster_listening()[0]))
        .collect();
    for t in &nodes {
        t.node.cluster_reload(&table).map_err(anyhow::Error::msg)?;
    }
    Ok(nodes)
}

async fn ask(t: &TestNode, target: Address, cmd: Command) -> anyhow::Result<Reply> {
    Ok(t.command(target, &cmd).await?)
}

/// A testkit on `t` that joined each of `groups`.
async fn member_of(t: &TestNode, groups: &[(&str, u8)]) -> anyhow::Result<Address> {
    let kit = t.spawn("testkit").await?;
    for (group, policy) in groups {
        let join = Command::GroupJoin {
            group: (*group).into(),
            policy: *policy,
        };
        anyhow::ensure!(ask(t, kit, join).await? == Reply::Unit, "join {group}");
    }
    Ok(kit)
}

/// Who answered a group call: `node/address`.
async fn who(t: &TestNode, group: &str, key: &[u8]) -> Result<String, CallError> {
    let payload = postcard::to_allocvec(&Command::WhoAmI).expect("encode");
    let r = t.client.group_call(group, key, payload, None).await?;
    match postcard::from_bytes(&r) {
        Ok(Reply::Bytes(b)) => Ok(String::from_utf8_lossy(&b).into_owned()),
        other => panic!("WhoAmI answered {other:?}"),
    }
}

async fn members_everywhere(nodes: &[TestNode], group: &str, n: usize) -> anyhow::Result<()> {
    for t in nodes {
        eventually(&format!("{n} members of {group}"), || {
            t.client.group_members(group).len() == n
        })
        .await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_spreads_hashing_agrees_and_members_that_go_leave_at_once() -> anyhow::Result<()>
{
    let nodes = cluster_of(&["a", "b", "c"]).await?;
    let mut kits = Vec::new();
    for t in &nodes {
        kits.push(member_of(t, &[("rr", 0), ("hash", 1)]).await?);
    }
    members_everywhere(&nodes, "rr", 3).await?;
    members_everywhere(&nodes, "hash", 3).await?;
    // Every node lists the same members, in the same order.
    let listed = nodes[0].client.group_members("hash");
    for t in &nodes[1..] {
        assert_eq!(t.client.group_members("hash"), listed);
    }

    // Round robin: 3,000 calls from one node, evenly over the three.
    let mut hits: HashMap<String, u32> = HashMap::new();
    for _ in 0..3_000 {
        *hits.entry(who(&nodes[0], "rr", b"").await?).or_default() += 1;
    }
    assert_eq!(hits.len(), 3, "{hits:?}");
    for (member, n) in &hits {
        assert!((950..=1_050).contains(n), "{member}: {n} of 3,000");
    }

    // Consistent hashing: a key reaches the same member from every node.
    let mut spread: HashMap<String, u32> = HashMap::new();
    for k in 0..300u32 {
        let key = format!("uid-{k}");
        let from_a = who(&nodes[0], "hash", key.as_bytes()).await?;
        for t in &nodes[1..] {
            assert_eq!(who(t, "hash", key.as_bytes()).await?, from_a, "key {key}");
        }
        *spread.entry(from_a).or_default() += 1;
    }
    assert_eq!(spread.len(), 3, "every member owns some keys: {spread:?}");

    // A member that ends leaves at once: on its node before its end is
    // seen, on the others as soon as their link says so.
    let gone = ask(&nodes[2], kits[2], Command::Exit { answer: true }).await?;
    assert_eq!(gone, Reply::Unit);
    members_everywhere(&nodes, "rr", 2).await?;
    for _ in 0..300 {
        let w = who(&nodes[0], "rr", b"").await?;
        assert!(
            !w.starts_with("c/"),
            "a call went to the member that ended: {w}"
        );
    }

    // A node that stops: its members go from every other node.
    let mut nodes = nodes;
    let b = nodes.remove(1);
    b.stop().await;
    members_everywhere(&nodes, "rr", 1).await?;
    members_everywhere(&nodes, "hash", 1).await?;
    for _ in 0..10 {
        assert!(who(&nodes[1], "hash", b"any").await?.starts_with("a/"));
    }
    // Leaving by hand, then a call to an empty group fails at once.
    ask(&nodes[0], kits[0], Command::GroupLeave("rr".into())).await?;
    match who(&nodes[0], "rr", b"").await {
        Err(CallError::Failed {
            cause: ErrorCause::UnknownAddress,
            detail,
        }) => assert!(detail.contains("no members"), "{detail}"),
        other => anyhow::bail!("a call to an empty group: {other:?}"),
    }
    for t in nodes {
        t.stop().await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_pending_goes_around_a_busy_member_and_timeouts_end_calls() -> anyhow::Result<()> {
    let nodes = cluster_of(&["x", "y"]).await?;
    member_of(&nodes[1], &[("lp", 2)]).await?;
    member_of(&nodes[1], &[("lp", 2)]).await?;
    member_of(&nodes[0], &[("slow", 0)]).await?;
    members_everywhere(&nodes, "lp", 2).await?;

    // One long call holds a member; every later call goes to the other.
    let sleep = postcard::to_allocvec(&Command::SleepThenEcho {
        ms: 60_000,
        payload: Vec::new(),
    })?;
    let client = nodes[0].node.client();
    let held = tokio::spawn(async move {
        client
            .group_call("lp", b"", sleep, Some(Duration::from_millis(20_000)))
            .await
    });
    // The held call is counted once a later call is answered.
    let first = who(&nodes[0], "lp", b"").await?;
    for _ in 0..100 {
        assert_eq!(who(&nodes[0], "lp", b"").await?, first);
    }
    held.abort();

    // A local member that does not answer in time: the call ends with a timeout.
    let sleep = postcard::to_allocvec(&Command::SleepThenEcho {
        ms: 5_000,
        payload: Vec::new(),
    })?;
    let r = nodes[0]
        .client
        .group_call("slow", b"", sleep, Some(Duration::from_millis(100)))
        .await;
    match r {
        Err(CallError::Failed {
            cause: ErrorCause::Timeout,
            detail,
        }) => assert!(detail.contains("group `slow`"), "{detail}"),
        other => anyhow::bail!("a timed-out group call: {other:?}"),
    }
    for t in nodes {
        t.stop().await;
    }
    Ok(())
}

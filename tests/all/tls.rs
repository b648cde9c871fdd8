//! Cluster links under TLS (docs/tls.md), with certificates made by
//! `skyhost cert`'s code: a call crosses a TLS link; a plain peer, a peer
//! whose certificate comes from another CA and a peer claiming a name its
//! certificate does not hold are each refused, and their calls end with an
//! error instead of waiting.

use std::path::Path;
use std::time::Duration;

use skyhost::ErrorCause;
use skyhost::cluster::proto::Target;
use skyhost::transport::tls::TlsFiles;
use skyhost_cli::cert;
use skyhost_test_proto::{Command, Reply};

use anyhow::Context;

use crate::support::{DEADLINE, Proc, TestNode, cluster_node, cluster_node_of, log_field, within};

const SECRET: &str = "tls test secret";

/// The files of `node`'s certificate made in `dir` by the CA in `ca`.
fn files(ca: &Path, node: &str, dir: &Path) -> anyhow::Result<TlsFiles> {
    let (cert, key) = cert::make_node(ca, node, dir)?;
    Ok(TlsFiles {
        cert,
        key,
        ca: ca.join("ca.pem"),
    })
}

/// A cluster node named `name`, under TLS with `tls` when given.
async fn node(name: &str, tls: Option<TlsFiles>) -> anyhow::Result<TestNode> {
    // Small: the test runs seven nodes in this process.
    cluster_node_of(name, SECRET, 256, |c| c.tls = tls).await
}

/// Calls `.kit` on node `a` from `from`, which knows it at `at`.
async fn call_a(from: &TestNode, at: &str) -> anyhow::Result<Result<Vec<u8>, skyhost::CallError>> {
    from.node
        .cluster_reload(&format!("a = \"{at}\"\n"))
        .map_err(anyhow::Error::msg)?;
    let echo = postcard::to_allocvec(&Command::Echo(b"over tls".to_vec()))?;
    Ok(from
        .client
        .cluster_call("a", Target::Name("kit".into()), echo, Some(DEADLINE))
        .await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_links_carry_calls_and_refuse_plain_foreign_and_false_peers() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (ca, other_ca) = (dir.path().join("ca"), dir.path().join("other"));
    cert::make_ca(&ca)?;
    cert::make_ca(&other_ca)?;
    let certs = dir.path().join("certs");

    let a = node("a", Some(files(&ca, "a", &certs)?)).await?;
    a.node.cluster_register("kit", a.spawn("testkit").await?);
    let at = a.node.cluster_listening()[0].to_string();

    let b = node("b", Some(files(&ca, "b", &certs)?)).await?;
    let answer = call_a(&b, &at).await??;
    assert_eq!(
        postcard::from_bytes::<Reply>(&answer)?,
        Reply::Bytes(b"over tls".to_vec())
    );

    // Refused, each ending its call with an error naming why.
    let plain = node("p", None).await?;
    let foreign = node("d", Some(files(&other_ca, "d", &certs)?)).await?;
    // A certificate of the right CA, for another node's name.
    let impostor = node("e", Some(files(&ca, "x", &certs)?)).await?;
    // The right CA and name, expiring in two seconds: the node starts,
    // and once the date is past, its links are refused. A node whose
    // certificate has expired already does not start.
    let now = cert::now();
    let expiring = |name: &str, until| -> anyhow::Result<TlsFiles> {
        let (cert, key) = cert::make_node_valid(&ca, name, &certs, now - cert::HOUR, until)?;
        Ok(TlsFiles {
            cert,
            key,
            ca: ca.join("ca.pem"),
        })
    };
    let late = Duration::from_secs(2);
    let expired = node("f", Some(expiring("f", now + late)?)).await?;
    let stale = node("g", Some(expiring("g", now - cert::DAY)?))
        .await
        .map(|_| ())
        .expect_err("an expired certificate");
    assert!(
        format!("{stale:#}").contains("g.pem: it has expired"),
        "{stale:#}"
    );
    // Its date is what is waited for.
    tokio::time::sleep(late + Duration::from_secs(1)).await;
    for (who, peer) in [
        ("plain", &plain),
        ("foreign", &foreign),
        ("impostor", &impostor),
        ("expired", &expired),
    ] {
        let err = tokio::time::timeout(DEADLINE + Duration::from_secs(5), call_a(peer, &at))
            .await??
            .expect_err(who);
        assert_eq!(err.cause(), Some(ErrorCause::NodeDown), "{who}: {err}");
        let why = match who {
            "plain" => "node `a` takes TLS links only",
            "foreign" => "invalid peer certificate",
            "expired" => "CertificateExpired",
            _ => "peer claims to be `e`: its certificate does not name `e`",
        };
        assert!(err.to_string().contains(why), "{who}: {err}");
    }
    // The TLS link still carries calls.
    assert!(call_a(&b, &at).await?.is_ok());
    for n in [b, plain, foreign, impostor, expired, a] {
        n.stop().await;
    }
    Ok(())
}

/// `skyhost cert` refuses to replace a CA, and a node name a certificate
/// cannot hold.
#[test]
fn cert_refuses_to_replace_a_ca_or_name_the_unnameable() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    cert::make_ca(dir.path())?;
    let again = cert::make_ca(dir.path()).expect_err("a CA is there");
    assert!(again.to_string().contains("holds a CA already"), "{again}");
    let bad = cert::make_node(dir.path(), "not a name", dir.path()).expect_err("spaces");
    assert!(
        format!("{bad:#}").contains("not a name a certificate can hold"),
        "{bad:#}"
    );
    Ok(())
}

/// A harbor node under TLS with the certificate `cert` (made by the CA in
/// `ca`), joining `master` or running it.
fn harbor_config(
    id: u8,
    master: Option<&str>,
    ca: &Path,
    cert: &str,
    dir: &Path,
) -> anyhow::Result<skyhost::NodeConfig> {
    let mut harbor = skyhost::config::HarborConfig::new(id, SECRET);
    match master {
        Some(m) => harbor.master = Some(m.to_string()),
        None => harbor.standalone = Some("127.0.0.1:0".into()),
    }
    harbor.tls = Some(files(ca, cert, dir)?);
    let mut config = crate::support::test_config();
    config.harbor = Some(harbor);
    // Few slots: several nodes share this process's memory maps.
    config.limits.max_services = 256;
    Ok(config)
}

async fn launch(config: &skyhost::NodeConfig) -> anyhow::Result<Result<TestNode, String>> {
    Ok(match within(skyhost::Node::launch(config)).await? {
        Ok(node) => Ok(TestNode {
            client: node.client(),
            node,
        }),
        Err(e) => Err(e.to_string()),
    })
}

/// Harbor links under TLS: a call crosses them; a node of another CA, a
/// plain node, a certificate that does not name the node's id (or the
/// master's), and a link claiming an id its certificate does not hold are
/// refused, each naming why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn harbor_links_under_tls_carry_calls_and_refuse_false_nodes() -> anyhow::Result<()> {
    use skyhost::harbor::proto::{Control, MASTER_PROTOCOL};
    use skyhost::transport::{Connection, LinkConfig, Tcp, tls::Tls};
    let dir = tempfile::tempdir()?;
    let (ca, other_ca) = (dir.path().join("ca"), dir.path().join("other"));
    cert::make_ca(&ca)?;
    cert::make_ca(&other_ca)?;
    let certs = dir.path().join("certs");

    // A master's certificate must name `harbor-master` as well.
    let no_master = launch(&harbor_config(1, None, &ca, "harbor-1", &certs)?)
        .await?
        .err()
        .context("a master without its name")?;
    assert!(
        no_master.contains("does not name `harbor-master`"),
        "{no_master}"
    );
    let n1 = launch(&harbor_config(
        1,
        None,
        &ca,
        "harbor-1,harbor-master",
        &dir.path().join("m"),
    )?)
    .await?
    .map_err(anyhow::Error::msg)?;
    let master = n1.node.master_address().context("master address")?;
    let n2 = launch(&harbor_config(2, Some(&master), &ca, "harbor-2", &certs)?)
        .await?
        .map_err(anyhow::Error::msg)?;
    crate::support::wait_for_mesh(&[&n1, &n2]).await?;
    let kit1 = n1.spawn("testkit").await?;
    let echoed = n2
        .command(kit1, &Command::Echo(b"harbor tls".to_vec()))
        .await?;
    assert_eq!(echoed, Reply::Bytes(b"harbor tls".to_vec()));

    // Refused at the join, each saying why.
    let mut plain = crate::support::test_config();
    let mut h = skyhost::config::HarborConfig::new(3, SECRET);
    h.master = Some(master.clone());
    plain.harbor = Some(h);
    plain.limits.max_services = 256;
    let foreign = harbor_config(4, Some(&master), &other_ca, "harbor-4", &certs)?;
    let misnamed = harbor_config(5, Some(&master), &ca, "harbor-6", &certs)?;
    for (who, config, why) in [
        ("plain", &plain, "takes TLS links only"),
        ("foreign", &foreign, "invalid peer certificate"),
        (
            "misnamed",
            &misnamed,
            "own certificate does not name `harbor-5`",
        ),
    ] {
        let err = launch(config).await?.err().context(who)?;
        assert!(err.contains(why), "{who}: {err}");
    }

    // A link that names itself harbor 3 with harbor 2's certificate.
    let tls = Tls::load(&files(&ca, "harbor-2", &dir.path().join("again"))?)?.for_harbor();
    let link = LinkConfig::new(MASTER_PROTOCOL, "3", SECRET.as_bytes().into());
    let posing =
        Connection::<Control>::connect_secured(&Tcp, &master, link, Some((&tls, "master")))
            .await
            .map(|_| ())
            .expect_err("posing as harbor 3");
    assert!(
        posing.to_string().contains("does not name `harbor-3`"),
        "{posing}"
    );
    // The node under TLS still answers.
    let echoed = n2.command(kit1, &Command::Echo(b"still".to_vec())).await?;
    assert_eq!(echoed, Reply::Bytes(b"still".to_vec()));
    for n in [n2, n1] {
        n.stop().await;
    }
    Ok(())
}

/// A real node whose control address is under TLS (`[control] tls`), with
/// `secret` when given; its control address.
fn control_node(dir: &Path, ca: &Path, secret: Option<&str>) -> anyhow::Result<(Proc, String)> {
    let server = files(ca, "n1", &dir.join("n1"))?;
    let secret = secret
        .map(|s| format!("secret = {s:?}\n"))
        .unwrap_or_default();
    let text = format!(
        "module_paths = [{modules:?}]\ncache_dir = {cache:?}\nlog_level = \"info\"\n\n\
         [control]\naddress = \"127.0.0.1:0\"\n{secret}\
         tls = {{ cert = {:?}, key = {:?}, ca = {:?} }}\n",
        server.cert,
        server.key,
        server.ca,
        modules = crate::support::guest_dir().display().to_string(),
        cache = crate::support::cache_dir().display().to_string(),
    );
    let file = dir.join("node.toml");
    std::fs::write(&file, text)?;
    let mut node = Proc::start([Path::new("run"), &file]);
    let line = node.wait_for("control listening");
    let control = log_field(&line, "address").context("control address")?;
    Ok((node, control))
}

/// `skyhost ctl -c <control> list` with `tls` (certificate, key, CA and
/// the name the node's must hold) and `secret` when given: whether it
/// succeeded, and its stderr.
fn ctl_list(
    control: &str,
    tls: Option<(&TlsFiles, Option<&str>)>,
    secret: Option<&str>,
) -> (bool, String) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_skyhost"));
    cmd.env_remove("RUST_LOG")
        .env_remove("SKYHOST_SECRET")
        .args(["ctl", "-c", control]);
    if let Some((f, name)) = tls {
        if let Some(name) = name {
            cmd.args(["--tls-name", name]);
        }
        cmd.env("SKYHOST_TLS_CERT", &f.cert)
            .env("SKYHOST_TLS_KEY", &f.key)
            .env("SKYHOST_TLS_CA", &f.ca);
    }
    if let Some(s) = secret {
        cmd.env("SKYHOST_SECRET", s);
    }
    let out = cmd.arg("list").output().expect("run skyhost ctl");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The control address under TLS takes an operator by a certificate of the
/// fleet's CA (and the secret too when one is set); a plain client, an
/// operator of another CA, and a node whose certificate the operator's CA
/// did not sign are refused.
#[test]
fn the_control_address_under_tls_takes_operators_by_certificate() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (ca, other_ca) = (dir.path().join("ca"), dir.path().join("other"));
    cert::make_ca(&ca)?;
    cert::make_ca(&other_ca)?;
    let alice = files(&ca, "alice", &dir.path().join("ops"))?;
    // Mallory's certificate is from another CA; she trusts the node's.
    let mallory = TlsFiles {
        ca: ca.join("ca.pem"),
        ..files(&other_ca, "mallory", &dir.path().join("ops"))?
    };
    // Alice's own files, trusting the other CA for the node.
    let misled = TlsFiles {
        ca: other_ca.join("ca.pem"),
        ..alice.clone()
    };

    let (mut node, control) = control_node(dir.path(), &ca, None)?;
    for name in [None, Some("n1")] {
        let (ok, err) = ctl_list(&control, Some((&alice, name)), None);
        assert!(ok, "alice: {err}");
    }
    for (who, tls, secret, why) in [
        (
            "plain",
            None,
            Some("guess"),
            "closed the control connection",
        ),
        (
            "mallory",
            Some((&mallory, None)),
            None,
            "the node refused this certificate",
        ),
        (
            "misled",
            Some((&misled, None)),
            None,
            "invalid peer certificate",
        ),
        (
            "another node meant",
            Some((&alice, Some("n2"))),
            None,
            "not valid for name \"n2\"",
        ),
    ] {
        let (ok, err) = ctl_list(&control, tls, secret);
        assert!(!ok && err.contains(why), "{who}: {err}");
    }
    node.wait_for("control connection refused");
    node.signal("INT");
    assert!(node.wait_exit().success(), "{}", node.log());

    // With a secret as well, the certificate alone is not enough.
    let again = dir.path().join("again");
    std::fs::create_dir_all(&again)?;
    let (mut node, control) = control_node(&again, &ca, Some("s3"))?;
    let (ok, err) = ctl_list(&control, Some((&alice, None)), None);
    assert!(!ok && err.contains("not authenticated"), "{err}");
    let (ok, err) = ctl_list(&control, Some((&alice, None)), Some("s3"));
    assert!(ok, "{err}");
    node.signal("INT");
    assert!(node.wait_exit().success(), "{}", node.log());
    Ok(())
}

/// Calls `.kit` on `node` from `from` with an echo of `text` until it
/// answers (discovery may not have brought `node` yet); the echo must match.
async fn echo_until_answered(from: &TestNode, node: &str, text: &[u8]) -> anyhow::Result<()> {
    let echo = postcard::to_allocvec(&Command::Echo(text.to_vec()))?;
    let start = std::time::Instant::now();
    loop {
        let r = from
            .client
            .cluster_call(
                node,
                Target::Name("kit".into()),
                echo.clone(),
                Some(DEADLINE),
            )
            .await;
        match r {
            Ok(answer) => {
                anyhow::ensure!(
                    postcard::from_bytes::<Reply>(&answer)? == Reply::Bytes(text.to_vec()),
                    "{node} answered something else"
                );
                return Ok(());
            }
            Err(e) => anyhow::ensure!(start.elapsed() < DEADLINE, "{node} never answered: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Discovery through an etcd that serves clients over TLS and asks for
/// their certificates: nodes with `discovery_tls` find each other (their
/// own links under TLS too) and call; a node whose certificate is from
/// another CA is refused by etcd and says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_through_an_etcd_under_tls() -> anyhow::Result<()> {
    use skyhost::config::EtcdTls;
    let dir = tempfile::tempdir()?;
    let (ca, other_ca) = (dir.path().join("ca"), dir.path().join("other"));
    cert::make_ca(&ca)?;
    cert::make_ca(&other_ca)?;
    let certs = dir.path().join("certs");
    let server = files(&ca, "etcd", &certs)?;
    let etcd = skyhost_cli::tools::Etcd::start_with(
        crate::support::debian_tool("etcd", "etcd-server")?,
        Some(skyhost_cli::tools::EtcdServerTls {
            cert: server.cert,
            key: server.key,
            ca: server.ca,
        }),
    )?;
    let url = etcd.url("tls");
    let to_etcd = |own: &TlsFiles, ca: &Path| EtcdTls {
        ca: ca.join("ca.pem"),
        cert: Some(own.cert.clone()),
        key: Some(own.key.clone()),
        name: Some("etcd".into()),
    };
    let mut nodes = Vec::new();
    for name in ["a", "b"] {
        let own = files(&ca, name, &certs)?;
        let node = cluster_node(name, SECRET, |c| {
            c.discovery = Some(url.clone());
            c.lease_ttl_s = 2;
            c.discovery_tls = Some(to_etcd(&own, &ca));
            c.tls = Some(own.clone());
        })
        .await?;
        nodes.push(node);
    }
    let (a, b) = (&nodes[0], &nodes[1]);
    a.node.cluster_register("kit", a.spawn("testkit").await?);
    echo_until_answered(b, "a", b"found").await?;

    // Its client certificate from another CA: etcd refuses the node.
    let stranger = files(&other_ca, "c", &certs)?;
    let text = format!(
        "log_level = \"info\"\n\n[cluster]\nname = \"c\"\nlisten = \"127.0.0.1:0\"\n\
         secret = {SECRET:?}\ndiscovery = {url:?}\n\
         discovery_tls = {{ ca = {:?}, cert = {:?}, key = {:?}, name = \"etcd\" }}\n",
        ca.join("ca.pem"),
        stranger.cert,
        stranger.key,
    );
    let file = dir.path().join("c.toml");
    std::fs::write(&file, text)?;
    let mut c = Proc::start([Path::new("run"), &file]);
    // The session fails before it publishes; how tonic words it varies
    // (etcd's alert, a broken pipe or a closed connection, by who wrote
    // first), so the line is not matched further.
    let refused = c.wait_for("etcd discovery:");
    assert!(refused.contains("retrying"), "{refused}");
    assert!(!c.log().contains("published and watching"), "{}", c.log());
    c.signal("INT");
    c.wait_exit();
    for n in nodes {
        n.stop().await;
    }
    drop(etcd);
    Ok(())
}

/// `fleet up` of a fleet file with `tls = true` issues a CA and a
/// certificate per node: the nodes link under TLS through discovery, a
/// driver with a certificate of that CA calls each, and the fleet's
/// `operator.pem` opens their control addresses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_up_issues_the_certificates_of_a_tls_fleet() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let etcd = crate::support::etcd()?;
    let url = etcd.url("fleet-tls");
    std::fs::write(
        dir.path().join("n.toml"),
        "log_level = \"info\"\nmodule_paths = [\"{modules}\"]\n\n\
         [bootstrap]\nmodule = \"testkit\"\nargs = \"cluster=kit\"\n\n\
         [cluster]\nname = \"{name}\"\nlisten = \"127.0.0.1:{port}\"\ndiscovery = \"{etcd}\"\n\
         secret = \"fleet tls\"\ntls = {tls}\n\n\
         [control]\naddress = \"127.0.0.1:0\"\ntls = {tls}\n",
    )?;
    let fleet_file = dir.path().join("f.toml");
    std::fs::write(
        &fleet_file,
        format!(
            "etcd = {url:?}\ntls = true\n\n[vars]\nmodules = {:?}\n\n\
             [[type]]\nname = \"n\"\ntemplate = \"n.toml\"\ninstances = 2\n",
            crate::support::guest_dir().display().to_string()
        ),
    )?;
    let fleet = |action: &str| -> anyhow::Result<()> {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_skyhost"))
            .args(["fleet", action])
            .arg(&fleet_file)
            .env_remove("RUST_LOG")
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "fleet {action}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    };
    fleet("up")?;
    let result = async {
        let tls_dir = skyhost_cli::fleet::run_dir(&fleet_file).join("tls");
        let driver = files(&tls_dir, "driver", &dir.path().join("driver"))?;
        let node = cluster_node("driver", "fleet tls", |c| {
            c.discovery = Some(url.clone());
            c.tls = Some(driver);
        })
        .await?;
        for n in ["n1", "n2"] {
            echo_until_answered(&node, n, b"fleet").await?;
        }
        node.stop().await;
        let ready: skyhost_cli::fleet::Ready = serde_json::from_slice(&std::fs::read(
            skyhost_cli::fleet::run_dir(&fleet_file).join("n1.ready"),
        )?)?;
        let control = ready.control.context("n1's control address")?;
        let operator = TlsFiles {
            cert: tls_dir.join("operator.pem"),
            key: tls_dir.join("operator.key"),
            ca: tls_dir.join("ca.pem"),
        };
        let (ok, err) = ctl_list(&control, Some((&operator, Some("n1"))), None);
        anyhow::ensure!(ok, "operator: {err}");
        anyhow::Ok(())
    }
    .await;
    fleet("down")?;
    drop(etcd);
    result
}

/// A real TLS peer killed with calls in flight and restarted behaves as a
/// plain one does: every call ends with an error naming the node within
/// 1 s, exactly once, and the restarted peer answers the next call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_peer_killed_and_restarted_behaves_as_a_plain_one() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let ca = dir.path().join("ca");
    cert::make_ca(&ca)?;
    let certs = dir.path().join("certs");
    let two = files(&ca, "two", &certs)?;
    let conf = dir.path().join("cluster.conf");
    std::fs::write(&conf, "-- nobody: two only answers\n")?;
    let file = |listen: &str| -> anyhow::Result<std::path::PathBuf> {
        let path = crate::cluster::node_file_with(dir.path(), "two", &conf, listen, "cluster=kit");
        // The node file ends in its [cluster] table: the TLS line goes there.
        let mut text = std::fs::read_to_string(&path)?;
        text.push_str(&format!(
            "tls = {{ cert = {:?}, key = {:?}, ca = {:?} }}\n",
            two.cert.display().to_string(),
            two.key.display().to_string(),
            two.ca.display().to_string()
        ));
        std::fs::write(&path, text)?;
        Ok(path)
    };
    let (mut p, at) = crate::cluster::start_proc(&file("127.0.0.1:0")?);
    let here_tls = files(&ca, "here", &certs)?;
    let here = cluster_node_of("here", crate::cluster::SECRET, 256, |c| {
        c.tls = Some(here_tls)
    })
    .await?;
    here.node
        .cluster_reload(&format!("two = \"{at}\"\n"))
        .map_err(anyhow::Error::msg)?;
    echo_until_answered(&here, "two", b"before").await?;

    let slow = postcard::to_allocvec(&Command::SleepThenEcho {
        ms: 60_000,
        payload: Vec::new(),
    })?;
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..200 {
        let client = here.node.client();
        let payload = slow.clone();
        calls.spawn(async move {
            client
                .cluster_call("two", Target::Name("kit".into()), payload, None)
                .await
        });
    }
    // The calls are on the link once a later call on it is answered.
    echo_until_answered(&here, "two", b"in flight").await?;
    p.signal("KILL");
    let _ = p.wait_exit();
    let mut ended = 0;
    while let Some(r) = tokio::time::timeout(Duration::from_secs(1), calls.join_next())
        .await
        .context("a call still hung 1 s after kill -9")?
    {
        let detail = crate::cluster::failed_with(r?, ErrorCause::NodeDown);
        anyhow::ensure!(detail.contains("`two`"), "{detail}");
        ended += 1;
    }
    assert_eq!(ended, 200);

    // Restarted on the same address with the same certificate: answered
    // again, no change to the cluster table.
    let (mut p, _) = crate::cluster::start_proc(&file(&at)?);
    echo_until_answered(&here, "two", b"after").await?;
    here.stop().await;
    p.signal("INT");
    assert!(p.wait_exit().success(), "{}", p.log());
    Ok(())
}

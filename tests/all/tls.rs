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

use crate::support::{DEADLINE, TestNode, cluster_node};

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
    cluster_node(name, SECRET, |c| c.tls = tls).await
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
    for (who, peer) in [
        ("plain", &plain),
        ("foreign", &foreign),
        ("impostor", &impostor),
    ] {
        let err = tokio::time::timeout(DEADLINE + Duration::from_secs(5), call_a(peer, &at))
            .await??
            .expect_err(who);
        assert_eq!(err.cause(), Some(ErrorCause::NodeDown), "{who}: {err}");
        let why = match who {
            "plain" => "node `a` takes TLS links only",
            "foreign" => "invalid peer certificate",
            _ => "peer claims to be `e`: its certificate does not name it",
        };
        assert!(err.to_string().contains(why), "{who}: {err}");
    }
    // The TLS link still carries calls.
    assert!(call_a(&b, &at).await?.is_ok());
    for n in [b, plain, foreign, impostor, a] {
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

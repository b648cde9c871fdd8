//! Fuzz targets: every parser a peer, a guest or an operator controls, as a
//! function of arbitrary bytes (docs/fuzzing.md).
//!
//! Each target feeds its input to the real parser and checks what must hold
//! whatever the input: no panic, and the invariants named in its doc (a
//! failed link is dead and says nothing but its refusal; a record lies in
//! its buffer). `host/fuzz/` runs them under libFuzzer (`cargo fuzz run
//! <target> -s none`); the normal test suite replays the corpora they found
//! (`host/tests/fuzz_corpus.rs`), on the stable toolchain.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::transport::{Link, LinkConfig, LinkEvent, Role};

/// A fuzz target: a name (its corpus directory) and its function.
pub type Target = (&'static str, fn(&[u8]));

/// Every target of this crate.
pub const TARGETS: &[Target] = &[
    ("handshake", handshake),
    ("harbor_link", harbor_link),
    ("cluster_link", cluster_link),
    ("control_line", control_line),
    ("node_config", node_config),
    ("tenant_config", tenant_config),
    ("cluster_file", cluster_file),
    ("discovery_url", discovery_url),
    ("send_batch", send_batch),
    ("names", names),
    ("component", component),
];

const SECRET: &[u8] = b"fuzz secret";

fn link_config(name: &str) -> LinkConfig {
    let mut c = LinkConfig::new("skyhost-fuzz", name, Arc::from(SECRET));
    // Small enough that the fuzzer reaches chunking and the payload bound.
    c.chunk_size = 256;
    c.max_frame = 256 + 512;
    c.max_payload = 64 * 1024;
    c
}

/// Feeds `data` to `link` as bytes from its peer, in pieces whose size the
/// first byte picks, turning the clock between pieces; checks that every
/// control decoded encodes again, and that a failed link stays dead: it
/// takes no more bytes and writes nothing after its last words.
fn feed<C, H>(link: &mut Link<C, H>, now: &mut Instant, data: &[u8])
where
    C: Serialize + DeserializeOwned + std::fmt::Debug,
    H: Serialize + DeserializeOwned + Clone + std::fmt::Debug,
{
    let Some((&piece, data)) = data.split_first() else {
        return;
    };
    let piece = usize::from(piece).max(1);
    let mut input = BytesMut::new();
    let mut out = BytesMut::new();
    for bytes in data.chunks(piece) {
        input.extend_from_slice(bytes);
        let result = link.handle_bytes(*now, &mut input);
        while let Some(event) = link.poll_event() {
            if let LinkEvent::Control(c) = &event {
                assert!(postcard::to_allocvec(c).is_ok(), "{c:?} does not encode");
            }
        }
        out.clear();
        link.poll_transmit(*now, &mut out, 64 * 1024);
        if result.is_err() {
            assert!(link.is_closed(), "a failed link must be dead");
            assert!(
                link.handle_bytes(*now, &mut input).is_err(),
                "a dead link takes no more bytes"
            );
            out.clear();
            link.poll_transmit(*now, &mut out, 64 * 1024);
            assert!(out.is_empty(), "a dead link wrote after its last words");
            return;
        }
        *now += Duration::from_millis(u64::from(bytes[0] % 4) * 300);
        let _ = link.handle_timeout(*now);
    }
}

/// A server link fed raw bytes from its first one: the handshake, its
/// refusals and everything a peer can send before proving the secret.
pub fn handshake(data: &[u8]) {
    let mut now = Instant::now();
    let mut link = Link::<crate::harbor::proto::Control>::new(
        Role::Server,
        link_config("server"),
        now,
        [7; 32],
    );
    feed(&mut link, &mut now, data);
}

/// Two links that completed the handshake in memory; the server's.
fn up<C, H>(now: Instant) -> Link<C, H>
where
    C: Serialize + DeserializeOwned + std::fmt::Debug,
    H: Serialize + DeserializeOwned + Clone + std::fmt::Debug,
{
    let mut client = Link::<C, H>::new(Role::Client, link_config("client"), now, [1; 32]);
    let mut server = Link::<C, H>::new(Role::Server, link_config("server"), now, [2; 32]);
    let mut wire = BytesMut::new();
    for _ in 0..8 {
        if server.is_up() && client.is_up() {
            break;
        }
        client.poll_transmit(now, &mut wire, usize::MAX);
        let _ = server.handle_bytes(now, &mut wire);
        server.poll_transmit(now, &mut wire, usize::MAX);
        let _ = client.handle_bytes(now, &mut wire);
    }
    // Else the target would fuzz the handshake again, not an up link.
    assert!(server.is_up(), "the in-memory handshake did not finish");
    while server.poll_event().is_some() {}
    server
}

/// An up harbor link (service envelopes, harbor and master controls) fed
/// what a peer that knows the secret could send.
pub fn harbor_link(data: &[u8]) {
    let mut now = Instant::now();
    let mut link = up::<crate::harbor::proto::Control, crate::transport::Envelope>(now);
    feed(&mut link, &mut now, data);
}

/// An up cluster link (cluster headers, cluster, group and channel
/// controls) fed what a peer that knows the secret could send.
pub fn cluster_link(data: &[u8]) {
    let mut now = Instant::now();
    let mut link = up::<crate::cluster::proto::Control, crate::cluster::proto::Header>(now);
    feed(&mut link, &mut now, data);
}

/// The control address's request lines, and the text answers `skyhost
/// ctl` reads back.
pub fn control_line(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let lines: Vec<String> = text.lines().map(str::to_owned).collect();
    for line in &lines {
        let _ = crate::control::proto::Request::parse(line);
    }
    let _ = crate::control::proto::Answer::decode_text(&lines);
}

/// A node file.
pub fn node_config(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = crate::config::NodeConfig::parse(text, Path::new("fuzz.toml"));
    }
}

/// A tenant file.
pub fn tenant_config(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let limits = crate::config::Limits::default();
        let _ = crate::config::TenantConfig::parse(text, Path::new("t.toml"), &limits);
    }
}

/// A cluster file (Skynet's clustername syntax).
pub fn cluster_file(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = crate::cluster::ClusterTable::parse(text, Path::new("clustername"));
    }
}

/// A discovery URL (`etcd://host:port,.../prefix`).
pub fn discovery_url(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = crate::config::EtcdUrl::parse(text);
    }
}

/// A guest's `send-batch` buffer: the check and the walk agree, and every
/// record lies inside the buffer.
pub fn send_batch(data: &[u8]) {
    let checked = crate::wasm::outbox::check(data);
    let mut n = 0;
    for record in crate::wasm::outbox::records(data) {
        match record {
            Ok(r) => {
                assert!(r.payload.start <= r.payload.end && r.payload.end <= data.len());
                n += 1;
            }
            Err(t) => {
                assert_eq!(checked, Err(t));
                return;
            }
        }
    }
    assert_eq!(checked, Ok(n));
}

/// A component's bytes as the hibernation instrumenter reads them (a
/// module an operator deploys).
pub fn component(data: &[u8]) {
    let _ = crate::wasm::snapshot::instrument(data);
}

/// Two names a guest registers, for two tenants (4 bytes each, then the
/// names split at the first 0xff): names that pass the check never share a
/// key across tenants or within one.
pub fn names(data: &[u8]) {
    let Some((ids, rest)) = data.split_first_chunk::<8>() else {
        return;
    };
    let id = |b: &[u8]| crate::runtime::TenantId(u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    let (a, b) = (id(&ids[..4]), id(&ids[4..]));
    let (first, second) = match rest.iter().position(|&x| x == 0xff) {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &[][..]),
    };
    let (first, second) = (
        String::from_utf8_lossy(first),
        String::from_utf8_lossy(second),
    );
    use crate::runtime::names::{is_name, scoped};
    if is_name(&first) && is_name(&second) && scoped(a, &first) == scoped(b, &second) {
        assert!(
            a == b && first == second,
            "{a:?} {first:?} and {b:?} {second:?} share a key"
        );
    }
}

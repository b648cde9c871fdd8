//! Feeds arbitrary bytes to `FrameDecoder` and to server-side `Link`s (one
//! fresh, one past the handshake), cut into pieces at places the input
//! chooses. Nothing may panic: every call gives frames, a request for more
//! bytes, or an error.
#![no_main]

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use serde::{Deserialize, Serialize};
use skyhost::transport::codec::FrameDecoder;
use skyhost::transport::{Envelope, Frame, Link, LinkConfig, Role};

/// A stand-in for a layer's control protocol.
#[derive(Debug, Serialize, Deserialize)]
enum Control {
    Register { name: String, address: u32 },
    Query(String),
    Bye,
}

fn config(name: &str) -> LinkConfig {
    let mut config = LinkConfig::new("skyhost-fuzz", name, Arc::from(&b"fuzz secret"[..]));
    // Small sizes so chunking and limits are reached by small inputs.
    config.chunk_size = 64;
    config.max_frame = 1024;
    config.max_payload = 4096;
    config
}

/// A server link past the handshake with an in-memory client.
fn connected_server(now: Instant) -> Option<Link<Control>> {
    let mut client = Link::<Control>::new(Role::Client, config("client"), now, [1; 32]);
    let mut server = Link::<Control>::new(Role::Server, config("server"), now, [2; 32]);
    let mut buf = BytesMut::new();
    for _ in 0..4 {
        client.poll_transmit(now, &mut buf, usize::MAX);
        server.handle_bytes(now, &mut buf).ok()?;
        server.poll_transmit(now, &mut buf, usize::MAX);
        client.handle_bytes(now, &mut buf).ok()?;
    }
    server.is_up().then_some(server)
}

/// Splits `data` into pieces whose lengths come from the input itself.
fn pieces(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    let (sizes, body) = data.split_at(data.len().min(4));
    let mut sizes = sizes.iter().copied().cycle();
    let mut rest = body;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let n = (usize::from(sizes.next().unwrap_or(0)) + 1).min(rest.len());
        let (piece, tail) = rest.split_at(n);
        rest = tail;
        Some(piece)
    })
}

fn feed(link: &mut Link<Control>, data: &[u8], now: Instant) {
    let mut input = BytesMut::new();
    let mut out = BytesMut::new();
    for piece in pieces(data) {
        input.extend_from_slice(piece);
        if link.handle_bytes(now, &mut input).is_err() {
            break;
        }
        while link.poll_event().is_some() {}
        link.poll_transmit(now, &mut out, 1 << 16);
        out.clear();
    }
    link.poll_transmit(now, &mut out, usize::MAX);
    let _ = link.handle_timeout(now + Duration::from_secs(60));
}

fuzz_target!(|data: &[u8]| {
    let mut decoder = FrameDecoder::new(1024);
    let mut input = BytesMut::new();
    'pieces: for piece in pieces(data) {
        input.extend_from_slice(piece);
        loop {
            match decoder.decode::<Control, Envelope>(&mut input) {
                Ok(Some(frame)) => {
                    let _: Frame<Control> = frame;
                }
                Ok(None) => break,
                Err(_) => break 'pieces,
            }
        }
    }

    let now = Instant::now();
    let mut fresh = Link::<Control>::new(Role::Server, config("server"), now, [2; 32]);
    feed(&mut fresh, data, now);
    if let Some(mut up) = connected_server(now) {
        feed(&mut up, data, now);
    }
});

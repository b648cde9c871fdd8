//! The link state machine driven in memory: two links joined, no sockets.

#![allow(clippy::unwrap_used)]
use super::super::codec::tests::TestControl;
use super::super::frame::PROTOCOL_VERSION;
use super::*;
use proptest::prelude::*;

mod streams;

type TestLink = Link<TestControl>;

const MAX_STEPS: usize = 10_000;

fn config(name: &str, secret: &[u8]) -> LinkConfig {
    LinkConfig::new("skyhost-harbor", name, Arc::from(secret))
}

fn env(session: u32) -> Envelope {
    Envelope {
        dest: 0x0200_0001,
        source: 0x0100_0002,
        session,
        kind: 1,
        tenant: 3,
        trace: 0,
        seq: 0,
        batched: 0,
    }
}

/// Two links joined in memory; a side that fails stops reading but its
/// last words (`Refused`) still reach the other side.
struct Pair<H = Envelope> {
    client: Link<TestControl, H>,
    server: Link<TestControl, H>,
    now: Instant,
    /// Bytes per `poll_transmit`.
    limit: usize,
    client_events: Vec<LinkEvent<TestControl, H>>,
    server_events: Vec<LinkEvent<TestControl, H>>,
    client_err: Option<LinkError>,
    server_err: Option<LinkError>,
    /// Lose everything the server writes.
    drop_server_output: bool,
}

impl Pair {
    fn new(client: LinkConfig, server: LinkConfig) -> Self {
        Pair::with_header(client, server)
    }

    fn connected() -> Self {
        Pair::connected_with_header(config("alpha", b"sesame"), config("beta", b"sesame"))
    }
}

impl<H> Pair<H>
where
    H: Serialize + DeserializeOwned + Clone + fmt::Debug,
{
    /// Like `new`, with message header `H`.
    fn with_header(client: LinkConfig, server: LinkConfig) -> Self {
        let now = Instant::now();
        Pair {
            client: Link::new(Role::Client, client, now, [1; 32]),
            server: Link::new(Role::Server, server, now, [2; 32]),
            now,
            limit: 256 * 1024,
            client_events: Vec::new(),
            server_events: Vec::new(),
            client_err: None,
            server_err: None,
            drop_server_output: false,
        }
    }

    /// Like `connected`, with message header `H` and these configs.
    fn connected_with_header(client: LinkConfig, server: LinkConfig) -> Self {
        let mut pair = Pair::with_header(client, server);
        pair.drive();
        assert!(
            pair.client.is_up() && pair.server.is_up(),
            "handshake did not complete"
        );
        pair.client_events.clear();
        pair.server_events.clear();
        pair
    }

    /// One `poll_transmit` each way; whether any bytes moved.
    fn step(&mut self) -> bool {
        let mut moved = false;
        let mut buf = BytesMut::new();
        self.client.poll_transmit(self.now, &mut buf, self.limit);
        if !buf.is_empty() {
            moved = true;
            if self.server_err.is_none()
                && let Err(e) = self.server.handle_bytes(self.now, &mut buf)
            {
                self.server_err = Some(e);
            }
        }
        let mut buf = BytesMut::new();
        self.server.poll_transmit(self.now, &mut buf, self.limit);
        if !buf.is_empty() {
            moved = true;
            if self.client_err.is_none()
                && !self.drop_server_output
                && let Err(e) = self.client.handle_bytes(self.now, &mut buf)
            {
                self.client_err = Some(e);
            }
        }
        while let Some(e) = self.client.poll_event() {
            self.client_events.push(e);
        }
        while let Some(e) = self.server.poll_event() {
            self.server_events.push(e);
        }
        moved
    }

    /// Steps until no bytes move.
    fn drive(&mut self) {
        for _ in 0..MAX_STEPS {
            if !self.step() {
                return;
            }
        }
        panic!("links still busy after {MAX_STEPS} steps");
    }

    /// Jumps virtual time to the earlier `poll_timeout` and fires it.
    fn advance(&mut self) {
        let next = [self.client.poll_timeout(), self.server.poll_timeout()]
            .into_iter()
            .flatten()
            .min();
        let Some(next) = next else { return };
        self.now = self.now.max(next);
        if self.client_err.is_none()
            && let Err(e) = self.client.handle_timeout(self.now)
        {
            self.client_err = Some(e);
        }
        if self.server_err.is_none()
            && let Err(e) = self.server.handle_timeout(self.now)
        {
            self.server_err = Some(e);
        }
    }
}

fn encode(frames: &[Frame<TestControl>]) -> BytesMut {
    let mut buf = BytesMut::new();
    for f in frames {
        codec::encode_frame(f, &mut buf).unwrap();
    }
    buf
}

fn decode_all(mut buf: BytesMut) -> Vec<Frame<TestControl>> {
    let mut dec = FrameDecoder::new(usize::MAX);
    let mut out = Vec::new();
    while let Some(f) = dec.decode(&mut buf).unwrap() {
        out.push(f);
    }
    assert!(buf.is_empty());
    out
}

fn transmit(link: &mut TestLink, now: Instant) -> Vec<Frame<TestControl>> {
    let mut buf = BytesMut::new();
    link.poll_transmit(now, &mut buf, usize::MAX);
    decode_all(buf)
}

#[test]
fn handshake_brings_both_up() {
    let mut pair = Pair::new(config("alpha", b"sesame"), config("beta", b"sesame"));
    pair.drive();
    let up = |name: &str| {
        LinkEvent::Up(PeerInfo {
            name: name.into(),
            version: PROTOCOL_VERSION,
        })
    };
    assert_eq!(pair.client_events, vec![up("beta")]);
    assert_eq!(pair.server_events, vec![up("alpha")]);
    assert_eq!(pair.client.peer().unwrap().name, "beta");
    assert_eq!(pair.server.peer().unwrap().name, "alpha");
    assert_eq!((pair.client_err, pair.server_err), (None, None));
}

#[test]
fn wrong_secret_is_refused_both_ways() {
    let mut pair = Pair::new(config("alpha", b"sesame"), config("beta", b"open"));
    pair.drive();
    let server_err = pair.server_err.clone().unwrap();
    assert_eq!(
        server_err,
        LinkError::WrongSecret {
            peer: "alpha".into()
        }
    );
    assert_eq!(
        server_err.to_string(),
        "peer alpha failed the handshake: wrong secret"
    );
    assert_eq!(
        pair.client_err,
        Some(LinkError::Refused {
            reason: "wrong secret".into()
        })
    );
    assert!(!pair.client.is_up() && !pair.server.is_up());
    assert!(pair.server.is_closed() && pair.client.is_closed());
    assert!(pair.client_events.is_empty() && pair.server_events.is_empty());
}

#[test]
fn version_mismatch_is_refused_naming_both() {
    let now = Instant::now();
    let mut server = TestLink::new(Role::Server, config("beta", b"k"), now, [2; 32]);
    let hello = Frame::Hello {
        version: 9,
        protocol: "skyhost-harbor".into(),
        name: "alpha".into(),
        nonce: [0; 32],
    };
    let err = server.handle_bytes(now, &mut encode(&[hello])).unwrap_err();
    assert_eq!(
        err,
        LinkError::Version {
            peer: "alpha".into(),
            version: 9,
            expected: PROTOCOL_VERSION
        }
    );
    assert_eq!(
        err.to_string(),
        format!("peer alpha speaks protocol version 9, expected {PROTOCOL_VERSION}")
    );
    assert_eq!(
        transmit(&mut server, now),
        vec![Frame::Refused {
            reason: format!("protocol version 9, expected {PROTOCOL_VERSION}")
        }]
    );
    assert!(!server.has_transmit());
}

#[test]
fn protocol_mismatch_is_refused_naming_both() {
    let mut client = config("alpha", b"k");
    client.protocol = "skyhost-cluster".into();
    let mut pair = Pair::new(client, config("beta", b"k"));
    pair.drive();
    let server_err = pair.server_err.clone().unwrap();
    assert_eq!(
        server_err.to_string(),
        r#"peer alpha speaks protocol "skyhost-cluster", expected "skyhost-harbor""#
    );
    let Some(LinkError::Refused { reason }) = pair.client_err else {
        panic!("client not refused")
    };
    assert_eq!(
        reason,
        r#"protocol "skyhost-cluster", expected "skyhost-harbor""#
    );
}

#[test]
fn tampered_welcome_fails_with_peer_failed_proof() {
    let now = Instant::now();
    let mut client = TestLink::new(Role::Client, config("alpha", b"k"), now, [1; 32]);
    let mut server = TestLink::new(Role::Server, config("beta", b"k"), now, [2; 32]);
    let mut buf = BytesMut::new();
    client.poll_transmit(now, &mut buf, usize::MAX);
    server.handle_bytes(now, &mut buf).unwrap();
    server.poll_transmit(now, &mut buf, usize::MAX);
    client.handle_bytes(now, &mut buf).unwrap();
    client.poll_transmit(now, &mut buf, usize::MAX);
    server.handle_bytes(now, &mut buf).unwrap();
    assert!(server.is_up());
    let mut frames = transmit(&mut server, now);
    let [Frame::Welcome { mac }] = &mut frames[..] else {
        panic!("expected Welcome, got {frames:?}")
    };
    mac[0] ^= 0x80;
    let err = client.handle_bytes(now, &mut encode(&frames)).unwrap_err();
    assert_eq!(
        err,
        LinkError::PeerFailedProof {
            peer: "beta".into()
        }
    );
    assert!(!client.is_up());
}

#[test]
fn data_before_up_is_unexpected() {
    let now = Instant::now();
    let mut server = TestLink::new(Role::Server, config("beta", b"k"), now, [2; 32]);
    let msg = Frame::Message {
        envelope: env(1),
        payload: vec![1, 2, 3],
    };
    let err = server.handle_bytes(now, &mut encode(&[msg])).unwrap_err();
    assert_eq!(
        err,
        LinkError::Unexpected {
            state: "awaiting Hello",
            frame: "Message"
        }
    );
    assert_eq!(
        server.handle_bytes(now, &mut BytesMut::new()),
        Err(LinkError::Closed)
    );
}

#[test]
fn data_queued_before_up_waits_for_the_handshake() {
    let now = Instant::now();
    let mut client = TestLink::new(Role::Client, config("alpha", b"k"), now, [1; 32]);
    client.send_message(env(1), b"early".to_vec());
    client.send_control(TestControl::Query("early".into()));
    let frames = transmit(&mut client, now);
    assert!(matches!(&frames[..], [Frame::Hello { .. }]), "{frames:?}");
    assert!(!client.has_transmit());

    let mut pair = Pair::new(config("alpha", b"k"), config("beta", b"k"));
    pair.client.send_message(env(1), b"early".to_vec());
    pair.server.send_control(TestControl::Bye);
    pair.drive();
    assert_eq!(
        pair.server_events[1],
        LinkEvent::Message {
            envelope: env(1),
            payload: b"early".to_vec()
        }
    );
    assert_eq!(pair.client_events[1], LinkEvent::Control(TestControl::Bye));
}

#[test]
fn messages_and_controls_flow_both_ways_in_order() {
    let mut pair = Pair::connected();
    for i in 0..50u32 {
        pair.client.send_message(env(i), i.to_le_bytes().to_vec());
        pair.client.send_control(TestControl::Register {
            name: format!("svc{i}"),
            address: i,
        });
        pair.server.send_message(env(i + 100), vec![]);
    }
    pair.server.send_control(TestControl::Bye);
    pair.drive();
    assert_eq!(pair.server_events.len(), 100);
    for (i, pair_of_events) in pair.server_events.chunks(2).enumerate() {
        let i = i as u32;
        assert_eq!(
            pair_of_events,
            [
                LinkEvent::Message {
                    envelope: env(i),
                    payload: i.to_le_bytes().to_vec()
                },
                LinkEvent::Control(TestControl::Register {
                    name: format!("svc{i}"),
                    address: i
                }),
            ]
        );
    }
    assert_eq!(pair.client_events.len(), 51);
    assert_eq!(pair.client_events[50], LinkEvent::Control(TestControl::Bye));
    assert_eq!(pair.client.queued_bytes() + pair.server.queued_bytes(), 0);
}

#[test]
fn heartbeat_pings_are_answered_and_keep_the_link_alive() {
    let mut pair = Pair::connected();
    let start = pair.now;
    for _ in 0..100 {
        pair.advance();
        pair.drive();
    }
    assert_eq!((&pair.client_err, &pair.server_err), (&None, &None));
    assert!(
        pair.now - start >= Duration::from_secs(20),
        "only {:?} passed",
        pair.now - start
    );
    assert!(
        pair.client.pongs >= 10 && pair.server.pongs >= 10,
        "{} {}",
        pair.client.pongs,
        pair.server.pongs
    );
    assert!(pair.client.rtt().is_some() && pair.server.rtt().is_some());
    assert!(pair.client.frames_in() >= 10, "{}", pair.client.frames_in());
    assert!(pair.client_events.is_empty() && pair.server_events.is_empty());
}

#[test]
fn silent_peer_is_detected() {
    let mut pair = Pair::connected();
    let start = pair.now;
    pair.drop_server_output = true;
    for _ in 0..100 {
        if pair.client_err.is_some() {
            break;
        }
        pair.advance();
        pair.drive();
    }
    let Some(LinkError::PeerSilent { after }) = pair.client_err else {
        panic!("client did not notice: {:?}", pair.client_err)
    };
    assert!(after >= Duration::from_secs(5));
    assert_eq!(pair.now - start, Duration::from_secs(5));
    assert_eq!(pair.client.poll_timeout(), None);
    // The client's last words reached the server.
    assert!(
        matches!(pair.server_err, Some(LinkError::Refused { .. })),
        "{:?}",
        pair.server_err
    );
}

#[test]
fn handshake_must_finish_within_dead_after() {
    let now = Instant::now();
    let mut server = TestLink::new(Role::Server, config("beta", b"k"), now, [2; 32]);
    let deadline = server.poll_timeout().unwrap();
    assert_eq!(deadline, now + Duration::from_secs(5));
    server.handle_timeout(now + Duration::from_secs(4)).unwrap();
    assert_eq!(
        server.handle_timeout(deadline),
        Err(LinkError::PeerSilent {
            after: Duration::from_secs(5)
        })
    );
    assert_eq!(server.handle_timeout(deadline), Err(LinkError::Closed));
}

#[test]
fn random_bytes_after_handshake_are_an_error() {
    let mut pair = Pair::connected();
    let now = pair.now;
    let mut junk = BytesMut::from(&[5u8, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff][..]);
    let err = pair.server.handle_bytes(now, &mut junk).unwrap_err();
    assert!(
        matches!(err, LinkError::Codec(CodecError::Malformed(_))),
        "{err}"
    );
    let mut huge = BytesMut::from(&u32::MAX.to_le_bytes()[..]);
    let err = pair.client.handle_bytes(now, &mut huge).unwrap_err();
    assert!(
        matches!(err, LinkError::Codec(CodecError::TooLarge { .. })),
        "{err}"
    );
    assert!(matches!(
        &transmit(&mut pair.client, now)[..],
        [Frame::Refused { .. }]
    ));
}

#[test]
fn dead_link_drops_sends_and_keeps_only_refused() {
    let mut pair = Pair::connected();
    let now = pair.now;
    pair.server.send_message(env(1), vec![1; 10]);
    pair.server.send_message(env(2), vec![1; 1 << 20]);
    let _ = pair.server.handle_bytes(
        now,
        &mut encode(&[
            Frame::Pong(1),
            Frame::Chunk {
                stream: 9,
                part: vec![],
            },
        ]),
    );
    pair.server.send_message(env(3), vec![1; 10]);
    pair.server.send_control(TestControl::Bye);
    assert_eq!(pair.server.queued_bytes(), 0);
    assert!(matches!(
        &transmit(&mut pair.server, now)[..],
        [Frame::Refused { .. }]
    ));
    assert!(!pair.server.has_transmit());
}

#[test]
fn oversized_sends_are_dropped_not_fatal() {
    let mut pair = Pair::connected();
    pair.client.config.max_payload = 1 << 20;
    pair.client.send_message(env(1), vec![0; (1 << 20) + 1]);
    pair.client
        .send_control(TestControl::Query("x".repeat(100_000)));
    assert_eq!(pair.client.queued_bytes(), 0);
    pair.client.send_message(env(2), vec![1]);
    pair.drive();
    assert_eq!(
        pair.server_events,
        vec![LinkEvent::Message {
            envelope: env(2),
            payload: vec![1]
        }]
    );
}

#[test]
fn poll_transmit_respects_limit_at_frame_boundaries() {
    let mut pair = Pair::connected();
    for i in 0..10 {
        pair.client.send_message(env(i), vec![0; 100]);
    }
    let mut out = BytesMut::new();
    pair.client.poll_transmit(pair.now, &mut out, 250);
    // Each frame is 117 bytes (prefix 4, variant 1, envelope 11, length 1,
    // payload 100): three reach 250.
    let frames = decode_all(out.clone());
    assert_eq!(frames.len(), 3, "{} bytes", out.len());
    assert!(out.len() >= 250);
    pair.client.poll_transmit(pair.now, &mut out, 0);
    assert_eq!(decode_all(out).len(), 3, "nothing past the limit");
    assert!(pair.client.has_transmit());
}

#[test]
fn pings_wait_for_the_heartbeat_and_busy_links_do_not_ping() {
    let mut pair = Pair::connected();
    let t0 = pair.now;
    assert_eq!(
        pair.client.poll_timeout(),
        Some(t0 + Duration::from_secs(1))
    );
    pair.client
        .handle_timeout(t0 + Duration::from_millis(999))
        .unwrap();
    assert!(!pair.client.has_transmit());
    pair.client.send_message(env(1), vec![]);
    assert_eq!(
        pair.client.poll_timeout(),
        Some(t0 + Duration::from_secs(5)),
        "writing pending: no heartbeat"
    );
    pair.client
        .handle_timeout(t0 + Duration::from_secs(1))
        .unwrap();
    let frames = transmit(&mut pair.client, t0 + Duration::from_secs(1));
    assert!(matches!(&frames[..], [Frame::Message { .. }]), "{frames:?}");
    pair.client
        .handle_timeout(t0 + Duration::from_secs(2))
        .unwrap();
    assert_eq!(
        transmit(&mut pair.client, t0 + Duration::from_secs(2)),
        vec![Frame::Ping(0)]
    );
}

#[test]
fn close_sends_queued_small_frames_then_refused() {
    let mut pair = Pair::connected();
    pair.server
        .send_control(TestControl::Query("last words".into()));
    pair.server.send_message(env(1), vec![1; 10]);
    pair.server.send_message(env(2), vec![2; 1 << 20]);
    pair.server.close("shutting down");
    pair.server.close("twice");
    assert!(pair.server.is_closed() && pair.server.has_transmit());
    assert_eq!(pair.server.poll_timeout(), None);
    pair.drive();
    assert_eq!(
        pair.client_events,
        vec![
            LinkEvent::Control(TestControl::Query("last words".into())),
            LinkEvent::Message {
                envelope: env(1),
                payload: vec![1; 10]
            },
        ]
    );
    assert_eq!(
        pair.client_err,
        Some(LinkError::Refused {
            reason: "shutting down".into()
        })
    );
    assert!(!pair.server.has_transmit());
}

#[test]
fn close_during_handshake_refuses() {
    let now = Instant::now();
    let mut client = TestLink::new(Role::Client, config("alpha", b"k"), now, [1; 32]);
    client.send_message(env(1), vec![1]);
    client.close("going away");
    let frames = transmit(&mut client, now);
    assert!(
        matches!(&frames[..], [Frame::Hello { .. }, Frame::Refused { reason }] if reason == "going away"),
        "{frames:?}"
    );
}

/// Measures small-message throughput through one link pair, encode and
/// decode both in the loop: `cargo test --release -- --ignored --nocapture throughput`.
#[test]
#[ignore]
fn throughput_small_messages() {
    let mut pair = Pair::connected();
    let n = 4_000_000u32;
    let batch = 1000;
    let payload = [7u8; 32];
    let mut wire = BytesMut::with_capacity(1 << 20);
    let start = std::time::Instant::now();
    let mut received = 0u32;
    for b in 0..n / batch {
        for i in 0..batch {
            pair.client
                .send_message(env(b * batch + i), payload.to_vec());
        }
        pair.client.poll_transmit(pair.now, &mut wire, 1 << 20);
        pair.server.handle_bytes(pair.now, &mut wire).unwrap();
        while let Some(e) = pair.server.poll_event() {
            if let LinkEvent::Message { payload, .. } = e {
                received += payload.len() as u32 / 32;
            }
        }
    }
    let elapsed = start.elapsed();
    assert_eq!(received, n);
    println!(
        "{n} messages of 32 bytes in {elapsed:?}: {:.2} M msg/s",
        f64::from(n) / elapsed.as_secs_f64() / 1e6
    );
}

proptest! {
    /// Arbitrary bytes fed to a fresh server link never panic it: each
    /// call succeeds or fails with an error.
    #[test]
    fn arbitrary_input_to_server_never_panics(chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..200), 1..5)) {
        let now = Instant::now();
        let mut server = TestLink::new(Role::Server, config("beta", b"k"), now, [2; 32]);
        for chunk in chunks {
            let _ = server.handle_bytes(now, &mut BytesMut::from(&chunk[..]));
            let _ = transmit(&mut server, now);
        }
    }

    /// Arbitrary frames and bytes fed to a server that is up never panic
    /// it: each call succeeds or fails with an error.
    #[test]
    fn arbitrary_input_after_handshake_never_panics(
        frames in prop::collection::vec(super::super::codec::tests::arb_frame(), 0..8),
        junk in prop::collection::vec(any::<u8>(), 0..100),
    ) {
        let mut pair = Pair::connected();
        let now = pair.now;
        let mut input = encode(&frames);
        input.extend_from_slice(&junk);
        let _ = pair.server.handle_bytes(now, &mut input);
        while pair.server.poll_event().is_some() {}
        let _ = transmit(&mut pair.server, now);
        let _ = pair.server.handle_timeout(now + Duration::from_secs(10));
    }
}

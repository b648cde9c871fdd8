//! Large payloads: chunked, interleaved with small frames, reassembled.

use super::*;

fn big_payload(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3])
        .collect()
}

/// Index of the first `Message` event whose payload is longer than `len`.
fn position_of_large(events: &[LinkEvent<TestControl>], len: usize) -> usize {
    events
        .iter()
        .position(|e| matches!(e, LinkEvent::Message { payload, .. } if payload.len() > len))
        .unwrap()
}

#[test]
fn large_payload_does_not_hold_back_small_messages() {
    let mut pair = Pair::connected();
    let big = big_payload(16 << 20);
    pair.client.send_message(env(0), big.clone());
    assert_eq!(pair.client.queued_bytes(), big.len());
    // A few chunks go out first, then small messages are queued behind them.
    for _ in 0..3 {
        pair.step();
    }
    for i in 1..=100u32 {
        pair.client.send_message(env(i), vec![i as u8; 100]);
    }
    pair.step();
    let small: Vec<u32> = pair
        .server_events
        .iter()
        .filter_map(|e| match e {
            LinkEvent::Message { envelope, payload } if payload.len() == 100 => {
                Some(envelope.session)
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        small,
        (1..=100).collect::<Vec<_>>(),
        "all small messages in one step, in order"
    );
    pair.drive();
    assert_eq!(pair.server_events.len(), 101);
    assert_eq!(
        position_of_large(&pair.server_events, 100),
        100,
        "the large one completes last"
    );
    assert_eq!(
        pair.server_events[100],
        LinkEvent::Message {
            envelope: env(0),
            payload: big
        }
    );
    assert_eq!(pair.client.queued_bytes(), 0);
    assert!(pair.server.incoming.is_empty());
}

#[test]
fn small_messages_sent_right_after_a_large_one_arrive_first() {
    let mut pair = Pair::connected();
    pair.limit = 64 * 1024;
    let big = big_payload(16 << 20);
    pair.client.send_message(env(0), big.clone());
    for i in 1..=100u32 {
        pair.client.send_message(env(i), vec![7; 10]);
    }
    pair.drive();
    assert_eq!(pair.server_events.len(), 101);
    assert_eq!(position_of_large(&pair.server_events, 10), 100);
    assert_eq!(
        pair.server_events[100],
        LinkEvent::Message {
            envelope: env(0),
            payload: big
        }
    );
}

#[test]
fn large_payloads_interleave_round_robin_and_beyond_max_streams() {
    let small_chunks = |name: &str| {
        let mut config = config(name, b"sesame");
        config.chunk_size = 1000;
        config.max_frame = 2000;
        config
    };
    let mut pair = Pair::new(small_chunks("alpha"), small_chunks("beta"));
    pair.drive();
    pair.server_events.clear();
    let payloads: Vec<Vec<u8>> = (0..MAX_STREAMS + 5)
        .map(|i| big_payload(3000 + 777 * i))
        .collect();
    for (i, p) in payloads.iter().enumerate() {
        pair.client.send_message(env(i as u32), p.clone());
    }
    // One frame per call: a first chunk of each stream in progress, then
    // the second chunk of the first one.
    let mut out = BytesMut::new();
    for _ in 0..=MAX_STREAMS {
        pair.client.poll_transmit(pair.now, &mut out, 1);
        assert_eq!(pair.server.handle_bytes(pair.now, &mut out), Ok(()));
    }
    let streams: Vec<u32> = (0..MAX_STREAMS as u32).collect();
    assert_eq!(
        pair.server
            .incoming
            .keys()
            .copied()
            .collect::<std::collections::BTreeSet<_>>(),
        streams.into_iter().collect()
    );
    assert_eq!(pair.server.incoming[&0].buf.len(), 2000);
    pair.limit = 1;
    pair.drive();
    let mut got: Vec<(u32, Vec<u8>)> = pair
        .server_events
        .drain(..)
        .map(|e| match e {
            LinkEvent::Message { envelope, payload } => (envelope.session, payload),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    got.sort_by_key(|(s, _)| *s);
    assert_eq!(
        got.into_iter().map(|(_, p)| p).collect::<Vec<_>>(),
        payloads
    );
}

fn chunk_error(frames: &[Frame<TestControl>]) -> LinkError {
    let mut pair = Pair::connected();
    let now = pair.now;
    let err = pair
        .server
        .handle_bytes(now, &mut encode(frames))
        .unwrap_err();
    let refused = transmit(&mut pair.server, now);
    assert_eq!(
        refused,
        vec![Frame::Refused {
            reason: err.to_string()
        }]
    );
    err
}

#[test]
fn chunk_errors_are_link_errors() {
    let start = |stream, total, len| Frame::ChunkStart {
        stream,
        envelope: env(1),
        total,
        part: vec![0; len],
    };
    let chunk = |stream, len| Frame::Chunk {
        stream,
        part: vec![0; len],
    };

    let err = chunk_error(&[chunk(5, 10)]);
    assert_eq!(err, LinkError::Chunk("chunk for unknown stream 5".into()));

    let err = chunk_error(&[start(1, 100, 60), chunk(1, 41)]);
    assert_eq!(
        err,
        LinkError::Chunk("stream 1 got 101 bytes, more than its total of 100 bytes".into())
    );

    let err = chunk_error(&[start(1, 10, 11)]);
    assert!(
        matches!(err, LinkError::Chunk(ref m) if m.contains("more than its total")),
        "{err}"
    );

    let err = chunk_error(&[start(2, 64 * 1024 * 1024 + 1, 1)]);
    assert_eq!(
        err.to_string(),
        "bad chunk from peer: stream 2 announces 67108865 bytes, more than max_payload of 67108864 bytes"
    );

    let err = chunk_error(&[start(3, 100, 10), start(3, 100, 10)]);
    assert_eq!(
        err,
        LinkError::Chunk("stream 3 started while already open".into())
    );

    let too_many: Vec<_> = (0..=MAX_STREAMS as u32).map(|s| start(s, 100, 1)).collect();
    let err = chunk_error(&too_many);
    assert!(
        matches!(err, LinkError::Chunk(ref m) if m.contains("streams are open")),
        "{err}"
    );
}

#[test]
fn chunk_start_holding_everything_is_a_message() {
    let mut pair = Pair::connected();
    let now = pair.now;
    let frames = [
        Frame::ChunkStart {
            stream: 1,
            envelope: env(1),
            total: 3,
            part: vec![1, 2, 3],
        },
        Frame::ChunkStart {
            stream: 2,
            envelope: env(2),
            total: 4,
            part: vec![1, 2],
        },
        Frame::Chunk {
            stream: 2,
            part: vec![],
        },
        Frame::Chunk {
            stream: 2,
            part: vec![3, 4],
        },
        Frame::ChunkStart {
            stream: 2,
            envelope: env(3),
            total: 0,
            part: vec![],
        },
    ];
    pair.server.handle_bytes(now, &mut encode(&frames)).unwrap();
    let events: Vec<_> = std::iter::from_fn(|| pair.server.poll_event()).collect();
    assert_eq!(
        events,
        vec![
            LinkEvent::Message {
                envelope: env(1),
                payload: vec![1, 2, 3]
            },
            LinkEvent::Message {
                envelope: env(2),
                payload: vec![1, 2, 3, 4]
            },
            LinkEvent::Message {
                envelope: env(3),
                payload: vec![]
            },
        ]
    );
}

/// A message header other than `Envelope`: not `Copy`, with a heap field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
struct Target {
    name: String,
    compressed: bool,
}

fn target(name: &str, compressed: bool) -> Target {
    Target {
        name: name.into(),
        compressed,
    }
}

#[test]
fn another_header_type_round_trips_whole_and_chunked() {
    let mut pair = Pair::<Target>::connected_with_header(
        config("alpha", b"sesame"),
        config("beta", b"sesame"),
    );
    let big = big_payload(200_000);
    pair.client
        .send_message(target("db.primary", true), big.clone());
    pair.client
        .send_message(target("", false), b"small".to_vec());
    pair.client.send_control(TestControl::Bye);
    pair.server
        .send_message(target(&"x".repeat(1000), true), vec![9; 70_000]);

    // The first transmit holds the small frames, then the ChunkStart
    // carrying the header, then Chunks.
    let mut wire = BytesMut::new();
    pair.client.poll_transmit(pair.now, &mut wire, 100_000);
    let mut copy = wire.clone();
    let mut dec = FrameDecoder::new(usize::MAX);
    let mut frames: Vec<Frame<TestControl, Target>> = Vec::new();
    while let Some(f) = dec.decode(&mut copy).unwrap() {
        frames.push(f);
    }
    let kinds: Vec<_> = frames.iter().map(Frame::kind).collect();
    assert_eq!(kinds, ["Message", "Control", "ChunkStart", "Chunk"]);
    assert!(
        matches!(&frames[2], Frame::ChunkStart { envelope, total: 200_000, .. }
            if *envelope == target("db.primary", true)),
        "{:?}",
        frames[2].kind()
    );
    pair.server.handle_bytes(pair.now, &mut wire).unwrap();
    pair.drive();

    assert_eq!((&pair.client_err, &pair.server_err), (&None, &None));
    assert_eq!(
        pair.server_events,
        vec![
            LinkEvent::Message {
                envelope: target("", false),
                payload: b"small".to_vec()
            },
            LinkEvent::Control(TestControl::Bye),
            LinkEvent::Message {
                envelope: target("db.primary", true),
                payload: big
            },
        ]
    );
    assert_eq!(
        pair.client_events,
        vec![LinkEvent::Message {
            envelope: target(&"x".repeat(1000), true),
            payload: vec![9; 70_000]
        }]
    );
    assert_eq!(pair.client.queued_bytes() + pair.server.queued_bytes(), 0);
    assert!(pair.client.incoming.is_empty() && pair.server.incoming.is_empty());
}

#[test]
fn large_headers_are_chunked_to_fit_max_frame() {
    let tight = |name: &str| {
        let mut config = config(name, b"sesame");
        config.chunk_size = 1000;
        config.max_frame = 1100;
        config
    };
    let mut pair = Pair::<Target>::connected_with_header(tight("alpha"), tight("beta"));
    let long = |c: char, n: usize| target(&c.to_string().repeat(n), false);
    // Within chunk_size, but header and payload exceed max_frame.
    pair.client.send_message(long('a', 300), big_payload(900));
    // Chunked anyway; the header shortens the ChunkStart's part.
    pair.client.send_message(long('b', 300), big_payload(5000));
    // The header leaves room for no payload at all in the ChunkStart
    // (1 + 1 + 2 + 1092 + 1 + 2 + 1 = 1100 bytes): every byte goes in Chunks.
    pair.client.send_message(long('e', 1092), big_payload(3000));
    // The header alone exceeds max_frame: dropped, the link stays up.
    pair.client.send_message(long('c', 2000), vec![1; 10]);
    pair.client.send_message(long('d', 1), vec![2; 10]);
    pair.drive();

    assert_eq!((&pair.client_err, &pair.server_err), (&None, &None));
    assert!(pair.client.is_up() && pair.server.is_up());
    let mut got: Vec<_> = pair
        .server_events
        .drain(..)
        .map(|e| match e {
            LinkEvent::Message { envelope, payload } => (envelope, payload),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    got.sort_by_key(|(_, p)| p.len());
    assert_eq!(
        got,
        vec![
            (long('d', 1), vec![2; 10]),
            (long('a', 300), big_payload(900)),
            (long('e', 1092), big_payload(3000)),
            (long('b', 300), big_payload(5000)),
        ]
    );
    assert_eq!(pair.client.queued_bytes(), 0);
}

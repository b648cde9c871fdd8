//! Taps (`watch`): a watcher sees each message its service takes; one that
//! has gone is dropped; the service's end closes every watcher.

use super::*;
use crate::runtime::tap::Direction;

#[tokio::test]
async fn a_watcher_sees_each_message_and_the_end_closes_it() {
    let kernel = core(
        FakeLoader::default()
            .with("echo", |m| Act::Answer(m.payload.to_vec()))
            .with("exits", |_| Act::Exit),
    );
    let echo = within(spawn(&kernel, "echo")).await.expect("spawned");
    let watch = |a| {
        kernel
            .with_service(a, |h| h.usage.taps.add())
            .expect("alive")
    };
    let tapped = |a| {
        kernel
            .with_service(a, |h| h.usage.taps.is_on())
            .expect("alive")
    };
    let mut first = watch(echo);
    let gone = watch(echo);
    drop(gone);
    let c = client(&kernel);
    let long = vec![b'x'; 100];
    for payload in [b"one".to_vec(), long.clone()] {
        assert_eq!(within(c.call(echo, payload.clone())).await, Ok(payload));
    }
    let one = within(first.recv()).await.expect("an event");
    assert_eq!(
        (one.direction, one.kind, one.head.as_slice(), one.size),
        (Direction::In, kind::REQUEST, &b"one"[..], 3)
    );
    assert_eq!(one.peer, c.address());
    let two = within(first.recv()).await.expect("an event");
    assert_eq!((two.size, two.head.len()), (100, crate::runtime::tap::HEAD));
    assert!(tapped(echo), "one watcher is left");

    drop(first);
    assert_eq!(within(c.call(echo, b"x".to_vec())).await, Ok(b"x".to_vec()));
    assert!(!tapped(echo), "the last watcher went: taps off");

    let exits = within(spawn(&kernel, "exits")).await.expect("spawned");
    let mut last = watch(exits);
    c.send(exits, kind::TEXT, 0, b"bye".to_vec()).expect("sent");
    assert_eq!(within(last.recv()).await.map(|e| e.size), Some(3));
    assert!(within(last.recv()).await.is_none(), "closed at the end");
}

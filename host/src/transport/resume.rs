//! One-way messages that outlive a dropped link: each is delivered once,
//! or counted as dropped when the node it was for is gone. Harbor and
//! cluster links both use it; each layer says which of its messages are
//! one-way ([`Numbered`]) and carries the words below in its own controls.
//!
//! ```text
//!  sender                                          receiver
//!  Outbox: number (seq 1, 2, 3 …), keep ──frames──> Inbox: deliver each seq once
//!          drop kept ≤ floor        <──Received{floor} every 256 messages / 256 KiB
//!  on a new link, first:            ──{session, next}──>
//!                                   <──{known, floor, since}──
//!          known == my session: send again what is kept above floor
//!          known != my session: the peer is new; what is kept is dropped (counted)
//! ```
//!
//! A link that drops loses what was written to it and not read (a
//! partition, a peer that hung until it was found dead). Requests and
//! answers need nothing here: a request in flight fails with `NodeDown`
//! when its link drops, and its answer, if one comes, is late. Every other
//! message (sends, multicast copies, exit notices) is numbered by its
//! sender's [`Outbox`] in the order its link takes it, kept until the peer
//! says it arrived, and sent again on the next link of the same two
//! sessions. The receiver's [`Inbox`] delivers each number once: numbers at
//! or below its floor, or seen above it (a large message arrives after
//! smaller ones sent later), are duplicates.
//!
//! A session is one sender's life on one node (a harbor `Peer`, a cluster
//! `Sender`): a restarted node, or a node that forgot its peer, starts a
//! new one, and the other end then drops what it kept for the old one (the
//! node it was for is gone) and starts numbering for the new.

use std::collections::{BTreeSet, VecDeque};

/// Messages received between two acknowledgements, at most.
pub const ACK_EVERY: u32 = 256;
/// Payload bytes received between two acknowledgements, at most.
pub const ACK_BYTES: usize = 256 << 10;
/// How far past the first number not yet arrived a number may be. A link
/// carries numbers in order but for a large (chunked) message overtaken by
/// small ones sent after it, so a real sender stays far below; the bound
/// keeps what a receiver records of a misbehaving peer's numbers small.
pub const MAX_AHEAD: u64 = 1 << 16;

/// A message header that can carry a number: what a layer tells the
/// outbox of its messages.
pub trait Numbered: Clone {
    /// Whether the message is one-way, numbered and kept: everything but
    /// requests that wait for an answer and the answers themselves.
    fn one_way(&self) -> bool;
    /// Its number (0: none yet).
    fn seq(&self) -> u64;
    /// Gives it its number.
    fn set_seq(&mut self, seq: u64);
    /// How many messages it carries (a batch carries several under one
    /// number): what a drop counts.
    fn messages(&self) -> usize {
        1
    }
}

/// The sending side of one peer: numbers and what is kept.
pub struct Outbox<H> {
    /// This side's session with the peer.
    session: u64,
    /// The number the next message gets.
    next: u64,
    /// Messages written and not yet acknowledged, in number order.
    kept: VecDeque<(H, Vec<u8>)>,
}

impl<H: Numbered> Outbox<H> {
    /// A new session, `session` (not 0).
    pub fn new(session: u64) -> Self {
        Outbox {
            session: session.max(1),
            next: 1,
            kept: VecDeque::new(),
        }
    }

    /// Numbers `e` if it is [`numbered`] and has no number yet (one sent
    /// again keeps its own); whether it is to be kept.
    pub fn number(&mut self, e: &mut H) -> bool {
        if !e.one_way() {
            return false;
        }
        if e.seq() == 0 {
            e.set_seq(self.next);
            self.next += 1;
        }
        true
    }

    /// Keeps a numbered message until it is acknowledged.
    pub fn keep(&mut self, e: H, payload: Vec<u8>) {
        if self
            .kept
            .back()
            .is_some_and(|(last, _)| last.seq() >= e.seq())
        {
            // Sent again: kept already.
            return;
        }
        self.kept.push_back((e, payload));
    }

    /// The peer has every message up to `floor`.
    pub fn received(&mut self, floor: u64) {
        self.forget_through(floor);
    }

    /// Stops keeping the messages up to `floor`; how many there were.
    fn forget_through(&mut self, floor: u64) -> usize {
        let mut forgotten = 0;
        while self.kept.front().is_some_and(|(e, _)| e.seq() <= floor) {
            forgotten += self.kept.pop_front().map_or(0, |(e, _)| e.messages());
        }
        forgotten
    }

    /// What this side tells the peer first on a new link: its session and
    /// next number (the peer's inbox half comes from [`Inbox::offer`]).
    pub fn offer(&self) -> (u64, u64) {
        (self.session, self.next)
    }

    /// The lowest number still kept (`next` when none): a receiver that
    /// takes this session up anew is owed everything from here.
    pub fn first(&self) -> u64 {
        self.kept.front().map_or(self.next, |(e, _)| e.seq())
    }

    /// The peer's word on a new link: it knows session `known`, has every
    /// message of it up to `floor`, and was never owed those up to
    /// `since` (it took the session up there). What to send again, in
    /// order, and how many kept messages are dropped: those the peer was
    /// never owed, or all of them when it does not know this session (the
    /// node they were for is gone).
    pub fn resume(&mut self, known: u64, floor: u64, since: u64) -> (Vec<(H, Vec<u8>)>, usize) {
        self.resume_knowing(known, floor, since, false)
    }

    /// [`resume`](Self::resume), told whether the peer is the same life
    /// of its node that took this session's messages before: one that does
    /// not know the session then never took it up (the link that would
    /// have told it failed), and is owed everything kept.
    pub fn resume_knowing(
        &mut self,
        known: u64,
        floor: u64,
        since: u64,
        same_life: bool,
    ) -> (Vec<(H, Vec<u8>)>, usize) {
        if known != self.session {
            if same_life {
                return (self.kept.iter().cloned().collect(), 0);
            }
            return (Vec::new(), self.drop_kept());
        }
        // Broken on purpose: what the last link lost is taken as delivered.
        #[cfg(test)]
        if crate::sim::broken(crate::sim::Break::NoResend) {
            self.received(u64::MAX);
        }
        let dropped = self.forget_through(since);
        self.received(floor);
        (self.kept.iter().cloned().collect(), dropped)
    }

    /// Messages kept now.
    #[cfg(test)]
    pub fn kept(&self) -> usize {
        self.kept.len()
    }

    /// Drops everything kept (the peer left); how many.
    pub fn drop_kept(&mut self) -> usize {
        self.kept.drain(..).map(|(e, _)| e.messages()).sum()
    }
}

/// What the inbox makes of a numbered message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// First time: deliver it, and acknowledge `floor` when given.
    Fresh(Option<u64>),
    /// Delivered before: drop it.
    Duplicate,
    /// Further ahead than any sender goes ([`MAX_AHEAD`]): the peer is
    /// misbehaving; drop it unrecorded.
    TooFar,
}

/// The receiving side of one peer: which numbers arrived.
#[derive(Default)]
pub struct Inbox {
    /// The peer's session these numbers belong to (0: none yet).
    session: u64,
    /// Every number up to here arrived, or was never owed.
    floor: u64,
    /// Numbers up to here were never owed: the session was new here at
    /// that number (whatever the sender kept below it was for a node that
    /// forgot it, and is dropped, not delivered).
    since: u64,
    /// Numbers above `floor + 1` that arrived.
    above: BTreeSet<u64>,
    unacked: u32,
    unacked_bytes: usize,
}

impl Inbox {
    /// The peer's session these numbers belong to (0: none yet).
    pub fn session(&self) -> u64 {
        self.session
    }

    /// What this side tells the peer first on a new link: the session it
    /// knows, how far it has it, and below which number it never had it.
    pub fn offer(&self) -> (u64, u64, u64) {
        (self.session, self.floor, self.since)
    }

    /// The peer's word on a new link: its session, and the number of its
    /// next message. A session not known here starts anew: nothing of it
    /// arrived before `next`.
    pub fn resume(&mut self, session: u64, next: u64) {
        if session != self.session {
            *self = Inbox {
                session,
                floor: next.saturating_sub(1),
                since: next.saturating_sub(1),
                ..Inbox::default()
            };
        }
    }

    /// Message `seq` of `len` payload bytes arrived.
    pub fn arrived(&mut self, seq: u64, len: usize) -> Arrival {
        if seq > self.floor.saturating_add(MAX_AHEAD) {
            return Arrival::TooFar;
        }
        if seq <= self.floor || !self.above.insert(seq) {
            return Arrival::Duplicate;
        }
        while self.above.remove(&(self.floor + 1)) {
            self.floor += 1;
        }
        self.unacked += 1;
        self.unacked_bytes += len;
        if self.unacked >= ACK_EVERY || self.unacked_bytes >= ACK_BYTES {
            self.unacked = 0;
            self.unacked_bytes = 0;
            return Arrival::Fresh(Some(self.floor));
        }
        Arrival::Fresh(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A header of a layer: one-way, or a request or an answer.
    #[derive(Debug, Clone, Copy)]
    struct Msg {
        one_way: bool,
        seq: u64,
    }

    impl Numbered for Msg {
        fn one_way(&self) -> bool {
            self.one_way
        }
        fn seq(&self) -> u64 {
            self.seq
        }
        fn set_seq(&mut self, seq: u64) {
            self.seq = seq;
        }
    }

    fn send(seq: u64) -> Msg {
        Msg { one_way: true, seq }
    }

    /// Numbers and keeps `n` sends.
    fn write(out: &mut Outbox<Msg>, n: u64) -> Vec<Msg> {
        (0..n)
            .map(|_| {
                let mut e = send(0);
                assert!(out.number(&mut e));
                out.keep(e, vec![1, 2, 3]);
                e
            })
            .collect()
    }

    #[test]
    fn what_is_not_one_way_takes_no_number() {
        let mut out = Outbox::new(7);
        let mut request = Msg {
            one_way: false,
            seq: 0,
        };
        assert!(!out.number(&mut request));
        assert_eq!(request.seq, 0);
        let mut e = send(0);
        assert!(out.number(&mut e));
        assert_eq!(e.seq, 1);
    }

    #[test]
    fn what_a_dropped_link_lost_arrives_once_on_the_next() {
        let (mut out, mut inbox) = (Outbox::new(7), Inbox::default());
        let (session, next) = out.offer();
        inbox.resume(session, next);
        let sent = write(&mut out, 10);
        // The first link carried 1..=4 and 7; the rest were lost with it.
        for e in sent.iter().filter(|e| e.seq <= 4 || e.seq == 7) {
            assert!(matches!(inbox.arrived(e.seq, 3), Arrival::Fresh(_)));
        }
        let (known, floor, since) = inbox.offer();
        assert_eq!((known, floor, since), (7, 4, 0));
        let (again, dropped) = out.resume(known, floor, since);
        assert_eq!(dropped, 0, "the peer knows this session");
        assert_eq!(again.len(), 6, "5..=10 are sent again");
        let delivered: Vec<u64> = again
            .iter()
            .filter(|(e, _)| inbox.arrived(e.seq, 3) != Arrival::Duplicate)
            .map(|(e, _)| e.seq)
            .collect();
        assert_eq!(delivered, vec![5, 6, 8, 9, 10], "7 had arrived");
        assert_eq!(inbox.offer().1, 10);
        out.received(10);
        assert_eq!(out.kept(), 0);
    }

    #[test]
    fn a_peer_that_forgot_this_session_drops_what_was_kept() {
        let mut out = Outbox::new(7);
        write(&mut out, 3);
        let (again, dropped) = out.resume(0, 0, 0);
        assert_eq!((again.len(), dropped), (0, 3));
        assert_eq!(out.kept(), 0);
        // Its inbox starts at the next number: nothing before it is owed.
        let mut inbox = Inbox::default();
        let (session, next) = out.offer();
        inbox.resume(session, next);
        assert_eq!(inbox.offer(), (7, 3, 3));
        let mut e = send(0);
        out.number(&mut e);
        assert_eq!(inbox.arrived(e.seq, 3), Arrival::Fresh(None));
        assert_eq!(inbox.offer().1, 4);
    }

    /// A receiver took this session up at a later number (it heard this
    /// side's first word on a link that then failed): what was kept below
    /// that number is dropped and counted, not taken as delivered.
    #[test]
    fn what_a_receiver_was_never_owed_is_dropped_not_acknowledged() {
        let mut out = Outbox::new(7);
        write(&mut out, 5);
        let mut inbox = Inbox::default();
        let (session, next) = out.offer();
        inbox.resume(session, next);
        assert_eq!(inbox.offer(), (7, 5, 5));
        let (again, dropped) = out.resume(7, 5, 5);
        assert_eq!((again.len(), dropped), (0, 5));
        assert_eq!(out.kept(), 0);
    }

    #[test]
    fn the_receiver_acknowledges_every_few_hundred_messages() {
        let mut inbox = Inbox::default();
        inbox.resume(9, 1);
        let acks: Vec<u64> = (1..=1000u64)
            .filter_map(|seq| match inbox.arrived(seq, 10) {
                Arrival::Fresh(ack) => ack,
                other => panic!("{seq} is new: {other:?}"),
            })
            .collect();
        assert_eq!(acks, vec![256, 512, 768]);
        assert_eq!(inbox.arrived(999, 10), Arrival::Duplicate);
        let mut big = Inbox::default();
        big.resume(9, 1);
        assert_eq!(big.arrived(1, ACK_BYTES), Arrival::Fresh(Some(1)));
    }

    /// A receiver that never took this session up (the link that would
    /// have told it failed after this side's half of the first word), in
    /// the same life: everything kept is owed, from the first kept number.
    #[test]
    fn a_receiver_that_never_heard_the_session_is_owed_all_that_is_kept() {
        let mut out = Outbox::new(7);
        write(&mut out, 5);
        out.received(2);
        assert_eq!(out.first(), 3);
        let mut inbox = Inbox::default();
        inbox.resume(4, 9);
        let (known, floor, since) = inbox.offer();
        let (again, dropped) = out.resume_knowing(known, floor, since, true);
        assert_eq!(dropped, 0);
        assert_eq!(
            again.iter().map(|(e, _)| e.seq).collect::<Vec<_>>(),
            vec![3, 4, 5]
        );
        inbox.resume(7, out.first());
        for (e, _) in &again {
            assert!(matches!(inbox.arrived(e.seq, 3), Arrival::Fresh(_)));
        }
        assert_eq!(inbox.offer(), (7, 5, 2));
    }

    #[test]
    fn numbers_far_ahead_are_refused_unrecorded() {
        let mut inbox = Inbox::default();
        inbox.resume(9, 1);
        assert_eq!(inbox.arrived(u64::MAX, 1), Arrival::TooFar);
        assert_eq!(inbox.arrived(MAX_AHEAD + 1, 1), Arrival::TooFar);
        assert_eq!(inbox.arrived(MAX_AHEAD, 1), Arrival::Fresh(None));
        assert_eq!(inbox.offer().1, 0, "the gap below is still owed");
        assert_eq!(inbox.arrived(1, 1), Arrival::Fresh(None));
        assert_eq!(inbox.offer().1, 1);
    }

    proptest::proptest! {
        /// Whatever numbers a peer sends, each is taken at most once, the
        /// floor only rises, and what is recorded above it stays bounded.
        #[test]
        fn any_numbers_are_taken_at_most_once(seqs in proptest::collection::vec(0u64..200_000, 0..400)) {
            let mut inbox = Inbox::default();
            inbox.resume(3, 1);
            let mut taken = std::collections::BTreeSet::new();
            let mut floor = 0;
            for seq in seqs {
                if let Arrival::Fresh(_) = inbox.arrived(seq, 8) {
                    proptest::prop_assert!(taken.insert(seq), "{} taken twice", seq);
                }
                proptest::prop_assert!(inbox.floor >= floor);
                floor = inbox.floor;
                proptest::prop_assert!(inbox.above.len() as u64 <= MAX_AHEAD);
            }
        }
    }

    #[test]
    fn a_message_sent_again_keeps_its_number_and_is_kept_once() {
        let mut out = Outbox::new(7);
        let sent = write(&mut out, 2);
        let (again, _) = out.resume(7, 0, 0);
        for (mut e, payload) in again {
            assert!(out.number(&mut e));
            out.keep(e, payload);
        }
        assert_eq!(out.kept(), 2);
        assert_eq!(sent.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2]);
        let mut fresh = send(0);
        out.number(&mut fresh);
        assert_eq!(fresh.seq, 3);
    }
}

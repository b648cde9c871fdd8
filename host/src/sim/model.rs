//! What a simulated run asked for and what happened, and the promises
//! checked against it (docs/simulation.md, "Invariants").
//!
//! Every call and send has an id `(node, incarnation, number)`: the node
//! that made it, which start of that node (a restart is a new one), and
//! its number there. The ids travel in the payloads, so a reply or a
//! delivery names the call or send it belongs to.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::world::ENDS_WITHIN;

/// A call's or a send's id: node, incarnation, number.
pub(crate) type Id = (u8, u32, u64);

/// How a call ended (each one it ended, when it ended more than once).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The target's answer.
    Reply,
    /// An error with this cause (its byte on the wire) and detail.
    Failed(u8, String),
    /// Its caller stopped waiting.
    Timeout,
}

#[derive(Debug)]
struct Call {
    target: u8,
    /// When it was made, and how long until it first ended.
    at: Duration,
    took: Option<Duration>,
    /// Made after the last fault was repaired: it must be answered.
    after_repair: bool,
    outcomes: Vec<Outcome>,
}

#[derive(Debug)]
struct Sent {
    target: u8,
    at: Duration,
    refused: bool,
    delivered: u32,
}

/// The model of one run.
#[derive(Default)]
pub(crate) struct Model {
    /// Every event, with its simulated time, in the order it happened: two
    /// runs of one seed must give the same log.
    pub log: Vec<String>,
    calls: BTreeMap<Id, Call>,
    sends: BTreeMap<Id, Sent>,
    /// What no call or send can explain (a reply to the wrong caller).
    strays: Vec<String>,
    /// Incarnations of nodes that have crashed: what they asked for may
    /// never end, and what they sent may be lost.
    dead: BTreeSet<(u8, u32)>,
    /// When each node crashed.
    crashes: BTreeMap<u8, Vec<Duration>>,
    /// Each node's current incarnation.
    incarnation: BTreeMap<u8, u32>,
    /// Messages each node's harbor counted as dropped, as it last said.
    dropped: BTreeMap<(u8, u32), u64>,
    /// Global names that were wrong when looked at.
    names: Vec<String>,
    /// When calls from one node to another wait on purpose, `(from, to,
    /// since, until)`: the caller's cluster config does not name the
    /// target, and calls wait for the reload that does (`None`: not yet).
    waits: Vec<(u8, u8, Duration, Option<Duration>)>,
}

fn now() -> Duration {
    turmoil::sim_elapsed().unwrap_or_default()
}

impl Model {
    fn note(&mut self, event: String) {
        self.log
            .push(format!("{:>8.3} {event}", now().as_secs_f64()));
    }

    /// Node `node` starts: its new incarnation.
    pub fn started(&mut self, node: u8) -> u32 {
        let next = self.incarnation.get(&node).map_or(0, |i| i + 1);
        self.incarnation.insert(node, next);
        self.note(format!("start {node}.{next}"));
        next
    }

    /// Node `node` crashed at `at` (its current incarnation is gone).
    pub fn crashed(&mut self, node: u8, at: Duration) {
        let incarnation = self.incarnation.get(&node).copied().unwrap_or(0);
        self.dead.insert((node, incarnation));
        self.crashes.entry(node).or_default().push(at);
        self.log.push(format!(
            "{:>8.3} crash {node}.{incarnation}",
            at.as_secs_f64()
        ));
    }

    /// Whether `(node, incarnation)` is still running.
    pub fn alive(&self, node: u8, incarnation: u32) -> bool {
        !self.dead.contains(&(node, incarnation))
            && self.incarnation.get(&node) == Some(&incarnation)
    }

    /// A call `id` to node `target`'s echo was made.
    pub fn called(&mut self, id: Id, target: u8, after_repair: bool) {
        self.note(format!("call {id:?} -> {target}"));
        self.calls.insert(
            id,
            Call {
                target,
                at: now(),
                took: None,
                after_repair,
                outcomes: Vec::new(),
            },
        );
    }

    /// Call `id` ended (again, if it had already).
    pub fn ended(&mut self, id: Id, outcome: Outcome) {
        self.note(format!("end {id:?} {outcome:?}"));
        match self.calls.get_mut(&id) {
            Some(call) => {
                if call.outcomes.is_empty() && outcome != Outcome::Timeout {
                    call.took = Some(now().saturating_sub(call.at));
                }
                call.outcomes.push(outcome);
            }
            None => self
                .strays
                .push(format!("an end of call {id:?}, never made")),
        }
    }

    /// A send `id` to node `target`'s echo was made; `refused` when the
    /// sender was told at once that it could not go.
    pub fn sent(&mut self, id: Id, target: u8, refused: bool) {
        self.note(format!("send {id:?} -> {target} refused={refused}"));
        self.sends.insert(
            id,
            Sent {
                target,
                at: now(),
                refused,
                delivered: 0,
            },
        );
    }

    /// Send `id` reached its target.
    pub fn delivered(&mut self, id: Id) {
        self.note(format!("delivered {id:?}"));
        match self.sends.get_mut(&id) {
            Some(sent) => sent.delivered += 1,
            None => self
                .strays
                .push(format!("a delivery of send {id:?}, never made")),
        }
    }

    /// Something arrived that no call or send of its receiver explains.
    pub fn stray(&mut self, what: String) {
        self.note(format!("stray {what}"));
        self.strays.push(what);
    }

    /// From `at` (the step loop's time), node `from`'s calls to node `to`
    /// wait on purpose.
    pub fn waits_from(&mut self, at: Duration, from: u8, to: u8) {
        self.log.push(format!(
            "{:>8.3} calls from {from} to {to} wait",
            at.as_secs_f64()
        ));
        self.waits.push((from, to, at, None));
    }

    /// From `at`, node `from`'s calls to node `to` go again.
    pub fn waits_until(&mut self, at: Duration, from: u8, to: u8) {
        for w in &mut self.waits {
            if (w.0, w.1) == (from, to) && w.3.is_none() {
                w.3 = Some(at);
            }
        }
    }

    /// When call `id` to `target`, made at `at`, could go: at once, or
    /// when the wait it was made in ended.
    fn could_go(&self, id: Id, target: u8, at: Duration) -> Duration {
        self.waits
            .iter()
            .filter(|&&(from, to, since, until)| {
                (from, to) == (id.0, target) && since <= at && until.is_none_or(|u| at <= u)
            })
            .map(|&(.., until)| until.unwrap_or(Duration::MAX))
            .max()
            .unwrap_or(at)
    }

    /// A node's global names were not what they must be, at `at`.
    pub fn name_wrong(&mut self, at: Duration, what: String) {
        self.log
            .push(format!("{:>8.3} name {what}", at.as_secs_f64()));
        self.names.push(what);
    }

    /// What `(node, incarnation)`'s harbor has counted as dropped so far.
    pub fn dropped_so_far(&mut self, node: u8, incarnation: u32, dropped: u64) {
        self.dropped.insert((node, incarnation), dropped);
    }

    /// Whether `node` crashed at or after `since`.
    fn crashed_since(&self, node: u8, since: Duration) -> bool {
        self.crashes
            .get(&node)
            .is_some_and(|at| at.iter().any(|&t| t >= since))
    }

    /// Every promise the run broke, each named.
    pub fn check(&self) -> Vec<String> {
        let mut broken: Vec<String> = self.strays.iter().map(|s| format!("stray: {s}")).collect();
        broken.extend(self.names.iter().map(|n| format!("names: {n}")));
        for (&id, call) in &self.calls {
            let caller_alive = !self.dead.contains(&(id.0, id.1));
            let answers = call
                .outcomes
                .iter()
                .filter(|o| !matches!(o, Outcome::Timeout))
                .count();
            if answers > 1 {
                broken.push(format!(
                    "ended more than once: call {id:?} to {}: {:?}",
                    call.target, call.outcomes
                ));
            }
            if let Some(took) = call.took {
                let could_go = self.could_go(id, call.target, call.at);
                if call.at + took > could_go.saturating_add(ENDS_WITHIN) {
                    broken.push(format!(
                        "slow: call {id:?} to {} ended {took:?} after it was made ({:?}), \
                         more than {ENDS_WITHIN:?} after it could go",
                        call.target, call.outcomes[0]
                    ));
                }
            }
            if call.outcomes.first() == Some(&Outcome::Timeout) {
                broken.push(format!(
                    "hung: call {id:?} to {} had no answer and no error by its deadline",
                    call.target
                ));
            }
            if caller_alive && call.outcomes.is_empty() {
                broken.push(format!("never ended: call {id:?} to {}", call.target));
            }
            if call.after_repair && caller_alive && call.outcomes.first() != Some(&Outcome::Reply) {
                broken.push(format!(
                    "no traffic after the last repair: call {id:?} to {} ended {:?}",
                    call.target, call.outcomes
                ));
            }
        }
        let mut lost: BTreeMap<(u8, u32), Vec<Id>> = BTreeMap::new();
        for (&id, sent) in &self.sends {
            if sent.delivered > 1 {
                broken.push(format!(
                    "delivered more than once: send {id:?} to {}, {} times",
                    sent.target, sent.delivered
                ));
            }
            let both_lived =
                !self.dead.contains(&(id.0, id.1)) && !self.crashed_since(sent.target, sent.at);
            if both_lived && !sent.refused && sent.delivered == 0 {
                lost.entry((id.0, id.1)).or_default().push(id);
            }
        }
        for (sender, ids) in lost {
            let counted = self.dropped.get(&sender).copied().unwrap_or(0);
            if ids.len() as u64 > counted {
                broken.push(format!(
                    "silently lost: {} sends of node {}.{} to live nodes were never \
                     delivered, and its node counted {counted} dropped (first: {:?})",
                    ids.len(),
                    sender.0,
                    sender.1,
                    &ids[..ids.len().min(3)]
                ));
            }
        }
        broken
    }

    /// The call that took longest to end, how long, and how it ended.
    pub fn slowest(&self) -> Option<(Id, Duration, &Outcome)> {
        self.calls
            .iter()
            .filter_map(|(id, c)| Some((*id, c.took?, c.outcomes.first()?)))
            .max_by_key(|(_, took, _)| *took)
    }

    /// How many calls and sends the run made, for the report.
    pub fn counts(&self) -> (usize, usize) {
        (self.calls.len(), self.sends.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(broken: &[String], what: &str) -> bool {
        broken.iter().any(|b| b.starts_with(what))
    }

    #[test]
    fn each_broken_promise_is_named() {
        let mut m = Model::default();
        let a = m.started(1);
        m.started(2);
        m.called((1, a, 1), 2, false);
        m.ended((1, a, 1), Outcome::Reply);
        assert!(m.check().is_empty(), "{:?}", m.check());

        m.ended((1, a, 1), Outcome::Reply);
        assert!(named(&m.check(), "ended more than once"));

        let mut m = Model::default();
        let a = m.started(1);
        m.called((1, a, 1), 2, false);
        assert!(named(&m.check(), "never ended"));
        m.ended((1, a, 1), Outcome::Timeout);
        assert!(named(&m.check(), "hung"));

        let mut m = Model::default();
        let a = m.started(1);
        m.called((1, a, 1), 2, true);
        m.ended((1, a, 1), Outcome::Failed(5, "down".into()));
        assert!(named(&m.check(), "no traffic after the last repair"));

        let mut m = Model::default();
        let a = m.started(1);
        m.started(2);
        m.sent((1, a, 1), 2, false);
        assert!(named(&m.check(), "silently lost"));
        m.dropped_so_far(1, a, 1);
        assert!(m.check().is_empty(), "a counted drop is no loss");
        m.delivered((1, a, 1));
        m.delivered((1, a, 1));
        assert!(named(&m.check(), "delivered more than once"));

        let mut m = Model::default();
        m.stray("a reply for another caller".into());
        assert!(named(&m.check(), "stray"));

        let mut m = Model::default();
        m.name_wrong(Duration::ZERO, "node 2 still names echo-3".into());
        assert!(named(&m.check(), "names"));
    }

    #[test]
    fn what_a_crashed_node_asked_for_may_never_end() {
        let mut m = Model::default();
        let a = m.started(1);
        m.started(2);
        m.called((1, a, 1), 2, false);
        m.sent((1, a, 2), 2, false);
        m.sent((2, 0, 1), 1, false);
        m.crashed(1, Duration::ZERO);
        assert!(m.check().is_empty(), "{:?}", m.check());
        assert!(!m.alive(1, a));
        let b = m.started(1);
        assert!(m.alive(1, b));
    }
}

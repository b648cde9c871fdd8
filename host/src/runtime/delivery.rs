//! Delivery: a message, or a run of them for one service, into its mailbox
//! or on to the node that holds its target.
//!
//! [`Kernel::deliver`] takes one message; [`Kernel::deliver_run`] takes
//! several from one sender to one target (what `send-batch` hands over back
//! to back) with one address lookup, one count update and one lock for the
//! run, and the same checks per message: the tenant boundary, the mailbox's
//! limit, a closed mailbox.

use std::sync::atomic::Ordering;

use super::{Address, Kernel, Message, SendError, ServiceHandle, TenantId, kind, workers};

impl Kernel {
    /// Enqueues `message` for `dest`.
    ///
    /// # Errors
    /// `UnknownAddress` when no such service is alive here; `Overloaded`
    /// when its mailbox is at its limit.
    pub fn deliver(&self, dest: Address, message: Message) -> Result<(), SendError> {
        if dest.harbor() != self.harbor
            && let Some(harbor) = self.remote.get()
        {
            return harbor.forward(dest, message);
        }
        self.with_service(dest, |handle| {
            if !self.may_enter(handle, &message) {
                // Exactly what an unknown address answers: no oracle.
                return Err(SendError::UnknownAddress(dest));
            }
            self.enqueue(handle, message)
        })
        .unwrap_or(Err(SendError::UnknownAddress(dest)))
    }

    /// Enqueues `run` (messages from one sender, all for `dest`, left
    /// empty) in order: what [`deliver`](Self::deliver) does for each, with
    /// one lookup, one count update and one lock for the whole run.
    ///
    /// # Errors
    /// The first message refused, by its place in the run, and why; the
    /// ones before it went in, it and the ones after did not.
    pub fn deliver_run(
        &self,
        dest: Address,
        run: &mut Vec<Message>,
    ) -> Result<(), (usize, SendError)> {
        if dest.harbor() != self.harbor
            && let Some(harbor) = self.remote.get()
        {
            return harbor.forward_run(dest, run);
        }
        self.with_service(dest, |handle| {
            let allowed = run
                .iter()
                .position(|m| !self.may_enter(handle, m))
                .unwrap_or(run.len());
            let barred =
                (allowed < run.len()).then_some((allowed, SendError::UnknownAddress(dest)));
            run.truncate(allowed);
            self.enqueue_run(handle, run)?;
            barred.map_or(Ok(()), Err)
        })
        .unwrap_or_else(|| {
            run.clear();
            Err((0, SendError::UnknownAddress(dest)))
        })
    }

    /// Whether `message` may go to the service behind `target`: same
    /// tenant, from or to the host, or a request through a grant.
    fn may_enter(&self, target: &ServiceHandle, message: &Message) -> bool {
        target.tenant.id == message.tenant
            || message.tenant == TenantId::HOST
            || target.tenant.id == TenantId::HOST
            || self.through_grant(target, message)
    }

    /// Whether `message`, from another tenant than the target's, is a
    /// request through a grant: the sender's tenant may call an entry that
    /// the target's tenant exports, and that entry names the target now.
    fn through_grant(&self, target: &ServiceHandle, message: &Message) -> bool {
        if message.kind != kind::REQUEST {
            return false;
        }
        let Some(caller) = self.tenant(message.tenant) else {
            return false;
        };
        let owner = &target.tenant;
        let granted = caller.grants.iter().any(|(t, entry)| {
            *t == owner.id
                && owner
                    .exports
                    .get(entry)
                    .is_some_and(|name| self.query_name(owner.id, name) == Some(target.address))
        });
        if granted {
            caller.counters.grant_calls.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(
                from = %message.source,
                to = %target.address,
                caller = %caller.name,
                owner = %owner.name,
                "call through a grant"
            );
        }
        granted
    }

    /// Whether a service just made ready would wait behind hogs unless they
    /// are interrupted (fresh work first), judged by where its wake put it:
    /// - in the waking worker's `next`: it runs when the poll running there
    ///   ends, soon, or, when that poll is a hog's, at the end of the hog's
    ///   slice: a service a hog keeps waking (a one-way receiver) takes its
    ///   messages in batches, as a process woken by a running Erlang process
    ///   waits for that process's reductions, instead of making the hog
    ///   yield once per message;
    /// - where any worker can take it: only when no worker is idle;
    /// - with the hogs, or nowhere (it was running or queued already): no.
    ///
    /// On tokio's scheduler (no placement known) it always would.
    fn ready_waits_for_hogs(&self) -> bool {
        let Some(workers) = self.workers.load_full() else {
            return true;
        };
        match workers::take_placement() {
            Some(workers::Placement::Stealable) => !workers.has_idle(),
            Some(workers::Placement::Next | workers::Placement::Hogs) | None => false,
        }
    }

    /// Pushes `message` into the mailbox of the service behind `handle`.
    fn enqueue(&self, handle: &ServiceHandle, message: Message) -> Result<(), SendError> {
        self.admit(handle, 1, |_| handle.mailbox.push(message).is_ok())
            .map(drop)
    }

    /// [`enqueue`](Self::enqueue) for a run of messages (left empty): the
    /// ones past the mailbox's limit are refused, the rest go in under one
    /// lock.
    fn enqueue_run(
        &self,
        handle: &ServiceHandle,
        run: &mut Vec<Message>,
    ) -> Result<(), (usize, SendError)> {
        let asked = run.len();
        if asked == 0 {
            return Ok(());
        }
        let admitted = self.admit(handle, asked, |room| {
            run.truncate(room);
            handle.mailbox.push_run(run)
        });
        run.clear();
        match admitted {
            Ok(room) if room < asked => Err((room, SendError::Overloaded(handle.address))),
            Ok(_) => Ok(()),
            Err(e) => Err((0, e)),
        }
    }

    /// Counts `asked` messages into the mailbox behind `handle`, as many as
    /// its limit leaves room for, and has `push` put that many in: how many
    /// went in, or why none did.
    fn admit(
        &self,
        handle: &ServiceHandle,
        asked: usize,
        push: impl FnOnce(usize) -> bool,
    ) -> Result<usize, SendError> {
        let dest = handle.address;
        let mailbox = &handle.mailbox;
        let limit = handle.tenant.quotas.mailbox_limit;
        let before = mailbox.len.fetch_add(asked, Ordering::Relaxed);
        let mut room = asked;
        if limit != 0 && before + asked > limit {
            room = limit.saturating_sub(before).min(asked);
            mailbox.len.fetch_sub(asked - room, Ordering::Relaxed);
            handle.tenant.refused();
            if room == 0 {
                return Err(SendError::Overloaded(dest));
            }
        }
        let len = before + room;
        if len > mailbox.peak.load(Ordering::Relaxed) {
            mailbox.peak.fetch_max(len, Ordering::Relaxed);
        }
        // Marked before the messages are visible, so the service's pick-up,
        // which follows it, always clears the mark.
        // A push that finds the mailbox closed clears the mark itself; one
        // that goes in before the close is cleared by the service's end,
        // which closes the mailbox (under its lock) before it clears.
        let interrupt = before == 0 && self.sched.mark_ready(&mailbox.ready);
        workers::take_placement();
        if !push(room) {
            mailbox.len.fetch_sub(room, Ordering::Relaxed);
            mailbox.picked_up(self);
            return Err(SendError::UnknownAddress(dest));
        }
        if interrupt && self.ready_waits_for_hogs() {
            self.loader.interrupt_running();
        }
        warn_if_growing(handle, len);
        Ok(room)
    }
}

/// Logs when the mailbox behind `handle` passes its next warning length
/// (1024, then doubling), once per threshold.
fn warn_if_growing(handle: &ServiceHandle, len: usize) {
    let mailbox = &handle.mailbox;
    let warn_at = mailbox.warn_at.load(Ordering::Relaxed);
    if len >= warn_at
        && mailbox
            .warn_at
            .compare_exchange(warn_at, warn_at * 2, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        tracing::warn!(service = %handle.address, queued = len, "mailbox is growing");
    }
}

//! The trait a skyhost service implements.

use std::future::Future;
use std::rc::Rc;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::message::{Incoming, Message, Reply};

/// A skyhost service: state built by `init`, behaviour in `handle`.
///
/// Each message gets its own task running `handle`, so while one handler
/// awaits a call, others run (like Skynet coroutines); a message that needs
/// no waiting can be taken by `handle_now` first, without a task. The state is shared as
/// `Rc<Self>`; use `Cell`/`RefCell` for what changes, and do not hold a
/// `RefCell` borrow across an `.await`.
///
/// Register the type with [`export_service!`](crate::export_service).
pub trait Service: Sized + 'static {
    /// Builds the state from the spawn arguments. An `Err` ends the service
    /// and fails its spawn with the text as detail.
    ///
    /// Nothing can be awaited here (the host is still inside `init`); do
    /// what waits in [`start`](Service::start), or [`fork`](crate::fork) it.
    ///
    /// # Errors
    /// Whatever text explains why the service cannot start.
    fn init(args: Vec<u8>) -> Result<Self, String>;

    /// Handles one message. For a request, the returned [`Reply`] is sent
    /// to the caller, unless the handler took the responder.
    fn handle(self: Rc<Self>, msg: Message) -> impl Future<Output = Reply> + 'static;

    /// Handles a message on the spot, when it can be done without awaiting:
    /// no task, no copy of the payload, no allocation by the SDK. `None`
    /// (the default) hands it to [`handle`](Service::handle) instead.
    ///
    /// For a request, the returned [`Reply`] is sent at once (there is no
    /// responder to take: return `None` to answer later); for other kinds
    /// it is ignored. Answers to this service's own sessions, and publishes
    /// on a channel with its own handler, never come here.
    fn handle_now(&self, msg: &Incoming<'_>) -> Option<Reply> {
        let _ = msg;
        None
    }

    /// Runs once as a task right after a successful `init` (Skynet's
    /// `skynet.start` body): calls, spawns and timers may be awaited here.
    /// Messages are handled while it waits.
    fn start(self: Rc<Self>) -> impl Future<Output = ()> + 'static {
        std::future::ready(())
    }
}

/// A service whose state survives an upgrade of its module (`upgrade` on
/// the node's control address) and a hibernation (on a node with
/// `hibernate_after_ms`, an idle service gives up its instance and is
/// restored from its state on its next message; a service that is not
/// `Stateful` stays awake). A service with no state says so with
/// `type State = ()`.
///
/// The running version's [`save`](Stateful::save) is encoded with postcard
/// and handed to the new version's [`restore`](Stateful::restore), which
/// builds the service in place of `init` (`start` does not run again).
/// The host upgrades only between messages, while the service waits on no
/// call, spawn or timer of its own, so no task is lost. Postcard is not
/// self-describing: when a new version changes `State`, keep the old shape
/// decodable (an enum of versions, say). A state that does not decode fails
/// the upgrade and the old version carries on.
///
/// Register the type with `export_service!(MyService, stateful)`.
pub trait Stateful: Service {
    /// What crosses from one version to the next.
    type State: Serialize + DeserializeOwned;

    /// The state to hand to the next version; must not change the service.
    fn save(&self) -> Self::State;

    /// Builds the service from the previous version's state.
    ///
    /// # Errors
    /// Whatever text explains why the state cannot be taken over; the
    /// upgrade is cancelled and the old version carries on.
    fn restore(state: Self::State) -> Result<Self, String>;
}

//! The trait a skyhost service implements.

use std::future::Future;
use std::rc::Rc;

use crate::message::{Message, Reply};

/// A skyhost service: state built by `init`, behaviour in `handle`.
///
/// Each message gets its own task running `handle`, so while one handler
/// awaits a call, others run (like Skynet coroutines). The state is shared as
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

    /// Runs once as a task right after a successful `init` (Skynet's
    /// `skynet.start` body): calls, spawns and timers may be awaited here.
    /// Messages are handled while it waits.
    fn start(self: Rc<Self>) -> impl Future<Output = ()> + 'static {
        std::future::ready(())
    }
}

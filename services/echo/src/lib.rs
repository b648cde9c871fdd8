//! `echo`: answers every request with its payload unchanged.
//!
//! The payload is not decoded, so any protocol can use it, and the module
//! stays small (it is the module spawn benchmarks start). Non-request
//! messages are ignored. If spawned with non-empty args, they are a name
//! (utf-8) the service registers itself under, e.g. `.echo`.
//!
//! Its state is empty, and it says so (`Stateful` with `()`): it can be
//! upgraded without running `init` again, and it hibernates when idle on a
//! node that lets services hibernate.

use std::rc::Rc;

use skyhost_sdk::{Incoming, Message, Reply, Service, Stateful, export_service, register};

/// The echo service; it has no state.
struct Echo;

impl Service for Echo {
    fn init(args: Vec<u8>) -> Result<Self, String> {
        if !args.is_empty() {
            let name = String::from_utf8(args).map_err(|_| "echo: name is not utf-8")?;
            register(&name).map_err(|e| format!("echo: register {name}: {e}"))?;
        }
        Ok(Echo)
    }

    /// Every message is answered on the spot: no task per message.
    fn handle_now(&self, msg: &Incoming<'_>) -> Option<Reply> {
        Some(if msg.is_request() {
            Reply::Bytes(msg.payload.to_vec())
        } else {
            Reply::none()
        })
    }

    async fn handle(self: Rc<Self>, msg: Message) -> Reply {
        if msg.is_request() {
            Reply::Bytes(msg.payload)
        } else {
            Reply::none()
        }
    }
}

impl Stateful for Echo {
    type State = ();

    fn save(&self) -> Self::State {}

    fn restore((): Self::State) -> Result<Self, String> {
        Ok(Echo)
    }
}

export_service!(Echo, stateful);

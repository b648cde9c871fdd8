//! `hello`: the first service of the README (keep the two the same).

use skyhost_sdk::{Message, Reply, Service, export_service};
use std::rc::Rc;

struct Hello;

impl Service for Hello {
    fn init(_args: Vec<u8>) -> Result<Self, String> {
        skyhost_sdk::register(".hello").map_err(|e| e.to_string())?;
        Ok(Hello)
    }

    async fn handle(self: Rc<Self>, msg: Message) -> Reply {
        let name: String = match msg.decode() {
            Ok(n) => n,
            Err(e) => return Reply::error(e.to_string()),
        };
        // Awaiting a call does not block the service: other messages are handled meanwhile.
        skyhost_sdk::sleep(std::time::Duration::from_millis(10)).await;
        Reply::value(&format!("hello, {name}"))
    }
}

export_service!(Hello);

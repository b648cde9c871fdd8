//! `adder`: adds two numbers sent as JSON, or has another service (in any
//! language) add them: the cross-language JSON test's Rust side.
//!
//! Request `{"a": 2, "b": 3}` answers `{"sum": 5, "by": "rust"}`; with
//! `"via": <address>` it calls that service with `{"a", "b"}` as JSON and
//! answers its answer plus `"through": "rust"`.

use std::rc::Rc;

use serde::{Deserialize, Serialize};
use skyhost_sdk::{Address, Message, Reply, Service, export_service, json};

struct Adder;

#[derive(Deserialize)]
struct Request {
    a: i64,
    b: i64,
    #[serde(default)]
    via: Option<u32>,
}

#[derive(Serialize)]
struct Add {
    a: i64,
    b: i64,
}

#[derive(Serialize, Deserialize)]
struct Sum {
    sum: i64,
    by: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    through: Option<String>,
}

impl Service for Adder {
    fn init(_args: Vec<u8>) -> Result<Self, String> {
        Ok(Adder)
    }

    async fn handle(self: Rc<Self>, msg: Message) -> Reply {
        if !msg.is_request() {
            return Reply::none();
        }
        let req: Request = match json::decode(&msg) {
            Ok(r) => r,
            Err(e) => return Reply::error(e.to_string()),
        };
        let Some(via) = req.via else {
            return json::reply(&Sum {
                sum: req.a + req.b,
                by: "rust".into(),
                through: None,
            });
        };
        let add = Add { a: req.a, b: req.b };
        match json::call::<_, Sum>(Address(via), &add).await {
            Ok(mut sum) => {
                sum.through = Some("rust".into());
                json::reply(&sum)
            }
            Err(e) => Reply::error(e.to_string()),
        }
    }
}

export_service!(Adder);

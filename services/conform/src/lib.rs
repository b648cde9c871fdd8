//! `conform`: the conformance suite's service in Rust. Every language's
//! `conform` speaks the same raw-byte protocol (`docs/languages.md`): one
//! opcode byte, then its arguments; addresses are 4 bytes little-endian.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use skyhost_sdk::{
    Address, CallError, Message, Reply, SendError, Service, call_raw, export_service, flush, kind,
    monitor, query, register, send_raw, sleep, spawn_raw,
};

/// The conformance service: it remembers the exit notices it received.
struct Conform {
    exits: RefCell<Vec<u8>>,
}

impl Service for Conform {
    fn init(_args: Vec<u8>) -> Result<Self, String> {
        Ok(Conform {
            exits: RefCell::new(Vec::new()),
        })
    }

    async fn handle(self: Rc<Self>, msg: Message) -> Reply {
        if msg.kind == kind::EXIT {
            self.exits
                .borrow_mut()
                .extend_from_slice(&msg.source.0.to_le_bytes());
        }
        if !msg.is_request() {
            return Reply::none();
        }
        let Some((&op, args)) = msg.payload.split_first() else {
            return Reply::error("empty request");
        };
        match op {
            b'e' => Reply::bytes(args.to_vec()),
            b's' => match address(args) {
                Some((to, data)) => match send_raw(to, kind::TEXT, data) {
                    Ok(()) => Reply::bytes(Vec::new()),
                    Err(e) => Reply::error(send_error(&e)),
                },
                None => Reply::error("s: no address"),
            },
            b'c' => match address(args) {
                Some((to, data)) => match call_raw(to, data).await {
                    Ok(answer) => Reply::bytes(answer),
                    Err(e) => Reply::error(call_error(&e)),
                },
                None => Reply::error("c: no address"),
            },
            b'r' => match register(&String::from_utf8_lossy(args)) {
                Ok(()) => Reply::bytes(Vec::new()),
                Err(e) => Reply::error(e.to_string()),
            },
            b'q' => Reply::bytes(
                query(&String::from_utf8_lossy(args))
                    .map(|a| a.0.to_le_bytes().to_vec())
                    .unwrap_or_default(),
            ),
            b't' => match <[u8; 4]>::try_from(args) {
                Ok(ms) => {
                    sleep(Duration::from_millis(u32::from_le_bytes(ms).into())).await;
                    Reply::bytes(Vec::new())
                }
                Err(_) => Reply::error("t: ms is 4 bytes"),
            },
            b'p' => match spawn_raw(&String::from_utf8_lossy(args), &[]).await {
                Ok(a) => Reply::bytes(a.0.to_le_bytes().to_vec()),
                Err(e) => Reply::error(call_error(&e)),
            },
            b'u' => match address(args) {
                // A send is queued; the host's refusal comes at the flush.
                Some((to, _)) => match send_raw(to, kind::TEXT, b"") {
                    Ok(()) => match flush() {
                        Ok(()) => Reply::bytes(Vec::new()),
                        Err(refused) => Reply::bytes(send_error(&refused.error).into_bytes()),
                    },
                    Err(e) => Reply::bytes(send_error(&e).into_bytes()),
                },
                None => Reply::error("u: no address"),
            },
            b'x' => std::process::abort(),
            b'm' => match address(args) {
                Some((to, _)) => {
                    monitor(to);
                    Reply::bytes(Vec::new())
                }
                None => Reply::error("m: no address"),
            },
            b'n' => Reply::bytes(self.exits.borrow().clone()),
            _ => Reply::error(format!("unknown op {op}")),
        }
    }
}

/// An address (4 bytes, little-endian) and the rest.
fn address(args: &[u8]) -> Option<(Address, &[u8])> {
    let (head, rest) = args.split_first_chunk::<4>()?;
    Some((Address(u32::from_le_bytes(*head)), rest))
}

/// A send error by its WIT name.
fn send_error(e: &SendError) -> String {
    match e {
        SendError::UnknownAddress => "unknown-address",
        SendError::Overloaded => "overloaded",
        SendError::TooLarge => "too-large",
        SendError::ReservedKind => "reserved-kind",
        SendError::NodeDown => "node-down",
        SendError::Encode(_) => "encode",
        SendError::Cluster(_) => "cluster",
    }
    .to_string()
}

/// A failed call as `cause=<error-cause byte>` (or the send error).
fn call_error(e: &CallError) -> String {
    let cause = match e {
        CallError::ServiceError(_) => 0,
        CallError::UnknownAddress => 1,
        CallError::Exited => 2,
        CallError::Trapped => 3,
        CallError::Killed => 4,
        CallError::Timeout => 5,
        CallError::Overloaded => 6,
        CallError::SpawnFailed(_) => 7,
        CallError::NodeDown => 8,
        CallError::Send(s) => return format!("send={}", send_error(s)),
        CallError::Other { cause, .. } => *cause,
        _ => 255,
    };
    format!("cause={cause}")
}

export_service!(Conform);

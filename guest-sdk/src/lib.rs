//! Write skyhost services in Rust.
//!
//! A skyhost service is a WebAssembly component that exports `init` and
//! `dispatch-batch` (WIT world `batch-service`) and imports the node's `runtime`, `harbor`, `cluster` and
//! `multicast` interfaces (`wit/service.wit`).
//! This crate hides that raw interface behind:
//!
//! - a [`Service`] trait: `init` returns the state, `handle` takes each message;
//! - typed messages (serde + postcard) and raw-byte variants of everything;
//! - async [`call`], [`sleep`], [`spawn`] and friends, run by a small
//!   single-threaded executor inside the guest, so a handler can wait for a
//!   reply while other messages are handled (Skynet's coroutines);
//! - [`export_service!`], which writes the component's exports;
//! - the distributed layer: [`harbor`] (global names, node up/down),
//!   [`cluster`] (calls to named nodes, proxies, discovery) and
//!   [`multicast`] (channels, with a handler per channel if wanted).
//!
//! It is not a general async runtime: there is no I/O reactor and no threads.
//! Everything that waits is a host *session* (a call, a timer, a spawn), and
//! a task only wakes when the answer to its session arrives.
//!
//! ```text
//!  host ── dispatch-batch(buf) ─▶ runtime ──┬─ response/error for a waited session
//!                                          │     └─▶ wake the task awaiting it
//!                                          └─ request/text/exit/user kinds
//!                                                └─▶ new task: Service::handle(msg)
//!  tasks ── call/sleep/spawn ─▶ host imports (return at once; answers come
//!                                back later through dispatch)
//!        ── send ─▶ the service's queue ─▶ one send-batch import per flush
//!                   (at 64, before a call, an answer or other sends, when the
//!                   handlers return or wait; see [`send`] and [`flush`])
//! ```
//!
//! # Example
//!
//! ```no_run
//! use std::cell::Cell;
//! use std::rc::Rc;
//! use skyhost_sdk::{Message, Reply, Service, call, export_service, info};
//!
//! struct Counter {
//!     hits: Cell<u64>,
//! }
//!
//! impl Service for Counter {
//!     fn init(_args: Vec<u8>) -> Result<Self, String> {
//!         Ok(Counter { hits: Cell::new(0) })
//!     }
//!
//!     async fn handle(self: Rc<Self>, msg: Message) -> Reply {
//!         self.hits.set(self.hits.get() + 1);
//!         if !msg.is_request() {
//!             return Reply::none();
//!         }
//!         // Ask `.store` (another service) and answer with what it said.
//!         let Some(store) = skyhost_sdk::query(".store") else {
//!             return Reply::error("no .store");
//!         };
//!         match call::<u64, String>(store, &self.hits.get()).await {
//!             Ok(text) => Reply::value(&text),
//!             Err(e) => {
//!                 info!("store failed: {e}");
//!                 Reply::error(e.to_string())
//!             }
//!         }
//!     }
//! }
//!
//! export_service!(Counter);
//! ```
//!
//! Build services with `cargo build --target wasm32-wasip2 --release`; the
//! `.wasm` a `cdylib` produces is a component the host loads by file stem.

#![warn(missing_docs)]

/// The raw bindings `wit-bindgen` generated for `wit/service.wit`.
#[doc(hidden)]
#[allow(missing_docs, clippy::undocumented_unsafe_blocks, clippy::all)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "stateful-batch-service",
        pub_export_macro: true,
        default_bindings_module: "skyhost_sdk::bindings",
    });
}

mod address;
#[cfg(any(
    test,
    all(
        feature = "talc",
        target_family = "wasm",
        not(target_feature = "atomics")
    )
))]
mod alloc;
pub mod batch;
pub mod cluster;
mod delivery;
mod error;
mod executor;
#[cfg(test)]
mod fake;
pub mod group;
pub mod harbor;
pub mod json;
pub mod log;
mod message;
pub mod multicast;
mod node;
mod outbox;
mod queued;
mod runtime;
mod service;
mod session;
mod sys;
#[cfg(test)]
mod tests;

pub use address::{Address, kind};
pub use error::{CallError, DecodeError, Destination, NameError, Refused, SendError};
pub use message::{Incoming, Message, Reply, Responder};
pub use node::{
    call, call_raw, call_timeout, demonitor, exit, flush, fork, kill, monitor, new_session, now,
    query, register, self_address, send, send_raw, send_session, sleep, spawn, spawn_raw,
    start_trace, tenant, unregister, wait_session, wall_time,
};
pub use outbox::{BatchSendError, Outbox};
pub use service::{Service, Stateful};

/// What [`export_service!`] expands to; not a stable API.
#[doc(hidden)]
pub mod __private {
    pub use crate::runtime::{
        dispatch_batch, init, load_no_state, load_state, save_no_state, save_state,
    };
}

/// Exports a [`Service`] type as this component's `init`, `dispatch` and
/// `state` interface.
///
/// Use it once, in the service's crate (a `cdylib`):
///
/// ```ignore
/// skyhost_sdk::export_service!(MyService);            // upgrades start from `init`
/// skyhost_sdk::export_service!(MyService, stateful);  // state kept: see `Stateful`
/// ```
#[macro_export]
macro_rules! export_service {
    ($service:ty) => {
        $crate::export_service!(@with $service, $crate::__private::save_no_state(),
            |bytes| $crate::__private::load_no_state(bytes));
    };
    ($service:ty, stateful) => {
        $crate::export_service!(@with $service, $crate::__private::save_state::<$service>(),
            |bytes| $crate::__private::load_state::<$service>(bytes));
    };
    (@with $service:ty, $save:expr, $load:expr) => {
        const _: () = {
            struct __SkyhostGuest;

            impl $crate::bindings::Guest for __SkyhostGuest {
                fn init(
                    args: ::std::vec::Vec<u8>,
                ) -> ::core::result::Result<(), ::std::string::String> {
                    $crate::__private::init::<$service>(args)
                }

                fn dispatch_batch(batch: ::std::vec::Vec<u8>) {
                    $crate::__private::dispatch_batch::<$service>(batch)
                }
            }

            impl $crate::bindings::exports::skyhost::service::state::Guest for __SkyhostGuest {
                fn save_state() -> ::std::vec::Vec<u8> {
                    $save
                }

                fn load_state(
                    state: ::std::vec::Vec<u8>,
                ) -> ::core::result::Result<(), ::std::string::String> {
                    let load: fn(::std::vec::Vec<u8>) -> ::core::result::Result<(), ::std::string::String> = $load;
                    load(state)
                }
            }

    $crate::bindings::export!(__SkyhostGuest with_types_in $crate::bindings);
        };
    };
}

/// The guest's allocator (see `alloc.rs`): small blocks kept by size class
/// in front of talc, which takes and frees the rest in fewer steps than
/// wasi-libc's dlmalloc (cluster-oneway and local-oneway +8 % in
/// alternating runs of the same host with and without it).
#[cfg(all(
    feature = "talc",
    target_family = "wasm",
    not(target_feature = "atomics")
))]
#[global_allocator]
static ALLOCATOR: alloc::ClassCache<
    talc::cell::TalcSyncCell<
        talc::source::GlobalAllocSource<std::alloc::System>,
        talc::wasm::WasmBinning,
    >,
> = alloc::ClassCache::new(talc::cell::TalcSyncCell::new_wasm(
    talc::source::GlobalAllocSource::with_block_size(std::alloc::System, 16 * 1024),
));

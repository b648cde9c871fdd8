//! The host side of the WIT interfaces a service imports, one file per
//! interface (as wasmtime-wasi keeps them): each implements its interface's
//! `Host` trait for [`ServiceState`](super::state::ServiceState), the data of
//! the service's `Store`.

mod cluster;
mod groups;
mod harbor;
mod multicast;
mod runtime;

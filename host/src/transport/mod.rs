//! The transport between nodes, shared by harbor and cluster.
//!
//! ```text
//!  Kernel::deliver ─> Outgoing ─> mpsc ─> driver task ─> Link (sans-io) ─> bytes ─> TcpStream
//!  TcpStream ─> bytes ─> Link::handle_bytes ─> LinkEvent ─> LinkHandler (harbor/cluster) ─> Kernel::deliver
//! ```
//!
//! Everything about the wire is pure code with no socket, clock or tokio in
//! it: [`frame`] (the frames), [`codec`] (4-byte little-endian length, then
//! postcard), [`handshake`] (versioned challenge–response over HMAC-SHA256
//! with the shared secret; the secret never crosses the wire) and [`link`]
//! (one connection's state: handshake, chunking of large payloads so small
//! messages keep flowing beside them, heartbeat). [`driver`] is the one
//! small tokio task per connection that moves bytes between the socket and a
//! [`Link`]; it is the only code here that touches a socket. [`tls`] puts
//! TLS 1.3 (rustls, both sides authenticated) between the socket and the
//! driver when a node file asks for it. [`batch`] is the layout of several
//! one-way payloads carried as one message.

pub mod batch;
pub mod codec;
pub mod driver;
pub mod frame;
pub mod handshake;
pub mod link;
pub mod net;
pub mod resume;
pub mod tls;

pub use driver::{Connection, DriverError, LinkHandler, LinkInfo, LinkStats, Outgoing};
pub use frame::{Envelope, Frame};
pub use link::{Link, LinkConfig, LinkError, LinkEvent, PeerInfo, Role};
pub use net::{Listener, Net, Socket, Tcp};

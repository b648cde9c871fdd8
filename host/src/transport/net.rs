//! Where links get their sockets: the [`Net`] port.
//!
//! Harbor, its master and the cluster open every link socket through the
//! `Net` they were started with, never through `tokio::net` directly, as
//! quinn takes its sockets from its runtime. A node uses [`Tcp`], the
//! system's network. A simulation (docs/simulation.md) hands in a network
//! of its own whose sockets are byte streams ([`Socket::Stream`]), so many
//! nodes run in one process on a simulated network and clock with the real
//! harbor and cluster code.
//!
//! What only TCP has stays on [`Socket::Tcp`]: peeking at the first byte
//! to tell TLS from plain, moving a socket to another reactor, and TLS
//! itself. A link over [`Socket::Stream`] is plain.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;

use tokio::net::{TcpListener, TcpSocket, TcpStream};

use super::tls::ByteStream;

/// A boxed future that can move between threads.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A connected socket, as a [`Net`] gives it.
pub enum Socket {
    /// A TCP socket of the system's network.
    Tcp(TcpStream),
    /// Any other ordered, reliable byte stream (a simulated network's).
    Stream(Box<dyn ByteStream>),
}

/// How a node opens sockets: dials and listens.
pub trait Net: Send + Sync {
    /// Connects to `address` (`host:port`).
    ///
    /// # Errors
    /// The network's: refused, unreachable, a name that does not resolve.
    fn connect<'a>(&'a self, address: &'a str) -> BoxFuture<'a, io::Result<Socket>>;

    /// Listens on `address` (port 0 picks one). Binding does not wait, so
    /// a guest's import can open a listener without awaiting.
    ///
    /// # Errors
    /// The network's: the address is in use or not this host's.
    fn bind(&self, address: &str) -> io::Result<Box<dyn Listener>>;
}

/// A bound listener, as a [`Net`] gives it.
pub trait Listener: Send + Sync {
    /// Where it listens (the port picked, when asked for port 0).
    ///
    /// # Errors
    /// The network's.
    fn local_addr(&self) -> io::Result<SocketAddr>;

    /// The next connection and where it comes from.
    ///
    /// # Errors
    /// The network's (out of file descriptors, a connection reset before
    /// it was taken); the listener stays usable.
    fn accept(&self) -> BoxFuture<'_, io::Result<(Socket, SocketAddr)>>;
}

/// The system's network: TCP sockets on tokio's reactor.
#[derive(Debug, Clone, Copy, Default)]
pub struct Tcp;

impl Net for Tcp {
    fn connect<'a>(&'a self, address: &'a str) -> BoxFuture<'a, io::Result<Socket>> {
        Box::pin(async move { Ok(Socket::Tcp(TcpStream::connect(address).await?)) })
    }

    fn bind(&self, address: &str) -> io::Result<Box<dyn Listener>> {
        // An address of numbers binds without a name lookup; a host name
        // is looked up by the system's resolver (a node's own name, at
        // start or when a service opens a listener).
        let candidates: Vec<SocketAddr> = match address.parse::<SocketAddr>() {
            Ok(at) => vec![at],
            Err(_) => std::net::ToSocketAddrs::to_socket_addrs(address)?.collect(),
        };
        let mut failed = None;
        for at in candidates {
            match listen(at) {
                Ok(listener) => return Ok(Box::new(listener)),
                Err(e) => failed = Some(e),
            }
        }
        Err(failed.unwrap_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("`{address}` names no address"),
            )
        }))
    }
}

/// A listener at `at`, made as `tokio::net::TcpListener::bind` makes one:
/// the address reusable at once after a node stops (no wait for the old
/// connections' `TIME_WAIT`), a backlog of 1,024.
fn listen(at: SocketAddr) -> io::Result<TcpListener> {
    let socket = if at.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(at)?;
    socket.listen(1024)
}

impl Listener for TcpListener {
    fn local_addr(&self) -> io::Result<SocketAddr> {
        TcpListener::local_addr(self)
    }

    fn accept(&self) -> BoxFuture<'_, io::Result<(Socket, SocketAddr)>> {
        Box::pin(async move {
            let (stream, from) = TcpListener::accept(self).await?;
            Ok((Socket::Tcp(stream), from))
        })
    }
}

/// The address peers should dial to reach a listener bound at `bound`,
/// seen from a peer at `seen_from`'s side of a connection: a listener on
/// every interface (`0.0.0.0`, `::`) is reached at the address its node's
/// connection came from, with the listener's port.
pub fn reachable_at(bound: &str, seen_from: std::net::IpAddr) -> String {
    match bound.parse::<SocketAddr>() {
        Ok(at) if at.ip().is_unspecified() => SocketAddr::new(seen_from, at.port()).to_string(),
        _ => bound.to_string(),
    }
}

/// `address` (`host:port`) with its port replaced by `port`: where a
/// listener asked for at `address` (perhaps port 0) is reached by name.
pub fn with_port(address: &str, port: u16) -> String {
    match address.rsplit_once(':') {
        Some((host, _)) => format!("{host}:{port}"),
        None => format!("{address}:{port}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listener_on_every_interface_is_reached_where_its_node_came_from() {
        let from: std::net::IpAddr = "10.1.2.3".parse().expect("ip");
        assert_eq!(reachable_at("0.0.0.0:2527", from), "10.1.2.3:2527");
        assert_eq!(reachable_at("[::]:2527", from), "10.1.2.3:2527");
        assert_eq!(reachable_at("127.0.0.1:2527", from), "127.0.0.1:2527");
        assert_eq!(reachable_at("node-1:2527", from), "node-1:2527");
    }

    #[test]
    fn a_listener_is_reached_by_the_name_it_was_asked_for() {
        assert_eq!(with_port("node-1:0", 4000), "node-1:4000");
        assert_eq!(with_port("127.0.0.1:0", 4000), "127.0.0.1:4000");
        assert_eq!(with_port("[::1]:0", 4000), "[::1]:4000");
        assert_eq!(with_port("0.0.0.0:2527", 2527), "0.0.0.0:2527");
    }

    #[tokio::test]
    async fn tcp_binds_and_connects() {
        let listener = Tcp.bind("127.0.0.1:0").expect("bind");
        let at = listener.local_addr().expect("local address").to_string();
        let (dialled, accepted) = tokio::join!(Tcp.connect(&at), listener.accept());
        assert!(matches!(dialled.expect("connect"), Socket::Tcp(_)));
        let (socket, from) = accepted.expect("accept");
        assert!(matches!(socket, Socket::Tcp(_)));
        assert!(from.ip().is_loopback());
        assert!(Tcp.bind(&at).is_err(), "the port is taken");
    }
}

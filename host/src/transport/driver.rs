//! The tokio side of a link: one task per connection moves bytes between a
//! `TcpStream` and its sans-io [`Link`], takes what to send from a channel,
//! and hands what arrives to a [`LinkHandler`].

use std::time::Duration;

use bytes::{Buf, BytesMut};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::net::{Net, Socket};
use super::tls::{ByteStream, Stream, Tls, TlsError};
use super::{Envelope, Link, LinkConfig, LinkError, LinkEvent, PeerInfo, Role};

/// How many bytes the driver gathers before each write: small messages
/// sent close together share one `write` (and one TCP segment).
const WRITE_BATCH: usize = 256 * 1024;
/// How much the driver asks the socket for at once.
const READ_CHUNK: usize = 64 * 1024;
/// Outgoing items taken off the channel per wake-up.
const RECV_BATCH: usize = 512;

/// Something to send on a link.
#[derive(Debug)]
pub enum Outgoing<C, H = Envelope> {
    /// A service message: its header and payload.
    Message(H, Vec<u8>),
    /// A message of the layer's own protocol.
    Control(C),
}

impl<C, H> Outgoing<C, H> {
    /// What this item weighs in a backlog: its payload and a fixed overhead.
    pub fn weight(&self) -> usize {
        match self {
            Outgoing::Message(_, payload) => 64 + payload.len(),
            Outgoing::Control(_) => 64,
        }
    }
}

/// What a layer (harbor, cluster) does with what arrives on a link.
pub trait LinkHandler<C, H = Envelope> {
    /// A service message arrived.
    fn on_message(&mut self, header: H, payload: Vec<u8>);
    /// A control message arrived; an `Err` closes the link with that reason
    /// (control messages the handler queued first are still sent).
    fn on_control(&mut self, control: C) -> Result<(), String>;
}

/// What an owner keeps of the messages its connections write, to send
/// again on the next connection what the peer may not have got (harbor's
/// peers: one-way messages survive a dropped link). The driver numbers a
/// message as it takes it off the outgoing channel, so numbers follow the
/// channel's order.
pub trait Keep<H>: Send {
    /// Numbers `header` when its message is one to keep (a message sent
    /// again keeps its number); whether it is.
    fn number(&mut self, header: &mut H) -> bool;
    /// Keeps a numbered message, as it was written.
    fn keep(&mut self, header: H, payload: Vec<u8>);
}

/// How a connection ended or failed to start.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// The socket failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The peer broke the protocol, failed the handshake, or went silent.
    #[error("{0}")]
    Link(#[from] LinkError),
    /// The peer closed the connection.
    #[error("connection closed by peer")]
    Closed,
    /// The handshake did not finish in time.
    #[error("handshake not finished within {0:?}")]
    HandshakeTimeout(Duration),
    /// The peer's host did not take the connection in time (its machine is
    /// down, or a network drops what goes to it).
    #[error("no connection within {0:?}")]
    ConnectTimeout(Duration),
    /// Our layer refused what the peer sent.
    #[error("{0}")]
    Refused(String),
    /// TLS failed under the link, or the peer is not who its certificate
    /// or this end says it must be.
    #[error("{0}")]
    Tls(#[from] TlsError),
}

/// What a connection has carried, shared with whoever reports on it
/// (`netstat`); the driver keeps it current.
#[derive(Debug, Default)]
pub struct LinkStats {
    /// Whether a connection is running now.
    pub up: std::sync::atomic::AtomicBool,
    /// Bytes read from the socket.
    pub bytes_in: std::sync::atomic::AtomicU64,
    /// Bytes written to the socket.
    pub bytes_out: std::sync::atomic::AtomicU64,
    /// Frames received.
    pub frames_in: std::sync::atomic::AtomicU64,
    /// Connections made (more than one: it reconnected).
    pub connections: std::sync::atomic::AtomicU64,
    /// The last heartbeat's round trip in µs (0: none measured yet).
    pub rtt_us: std::sync::atomic::AtomicU64,
}

/// One link as `netstat` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    /// `harbor`, `cluster-out` (to a node this one calls) or `cluster-in`.
    pub kind: &'static str,
    /// The peer: a harbor id or a cluster node name.
    pub peer: String,
    /// Where it is (for outbound links, where it is dialled).
    pub address: String,
    /// Whether a connection is running now.
    pub up: bool,
    /// Bytes read and written.
    pub bytes_in: u64,
    /// Bytes written.
    pub bytes_out: u64,
    /// Frames received.
    pub frames_in: u64,
    /// Bytes waiting to be sent.
    pub queued_bytes: usize,
    /// Connections made so far.
    pub connections: u64,
    /// The last heartbeat round trip, in µs.
    pub rtt_us: Option<u64>,
}

impl LinkStats {
    /// The `netstat` row of this link.
    pub fn info(
        &self,
        kind: &'static str,
        peer: String,
        address: String,
        queued_bytes: usize,
    ) -> LinkInfo {
        use std::sync::atomic::Ordering::Relaxed;
        let rtt = self.rtt_us.load(Relaxed);
        LinkInfo {
            kind,
            peer,
            address,
            up: self.up.load(Relaxed),
            bytes_in: self.bytes_in.load(Relaxed),
            bytes_out: self.bytes_out.load(Relaxed),
            frames_in: self.frames_in.load(Relaxed),
            queued_bytes,
            connections: self.connections.load(Relaxed),
            rtt_us: (rtt > 0).then_some(rtt),
        }
    }
}

/// The time the links are told: tokio's clock, which is the system's on a
/// normal runtime and the simulated one under a paused or simulated clock
/// (docs/simulation.md), so a link's heartbeat and silence deadlines run
/// on the same clock as the timers that wake it.
fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}

/// `stream`, registered with the reactor of the runtime this runs on: on
/// a node's workers that is the worker's own, so the socket's readiness
/// wakes the thread that runs the connection (see `runtime::workers`).
fn rehome(stream: Stream) -> std::io::Result<Stream> {
    stream.rehome()
}

/// A connection whose handshake is done: the socket, its link state, and
/// bytes already read past the handshake.
pub struct Connection<C, H = Envelope> {
    stream: Stream,
    link: Link<C, H>,
    /// Counts items waiting in the outgoing channel, when the owner keeps one.
    backlog: Option<std::sync::Arc<std::sync::atomic::AtomicUsize>>,
    /// Kept current while it runs, when the owner keeps them.
    stats: Option<std::sync::Arc<LinkStats>>,
    /// Keeps what it writes, when the owner asks.
    keep: Option<Box<dyn Keep<H>>>,
    inbuf: BytesMut,
    outbuf: BytesMut,
}

impl<C, H> Connection<C, H>
where
    C: Serialize + DeserializeOwned,
    H: Serialize + DeserializeOwned + Clone + std::fmt::Debug,
{
    /// Connects to `address` and completes the handshake as the client.
    ///
    /// # Errors
    /// The socket's error, or the handshake's (refused, wrong secret, timeout).
    pub async fn connect(address: &str, config: LinkConfig) -> Result<Self, DriverError> {
        Self::connect_secured(&super::Tcp, address, config, None).await
    }

    /// Connects to `address` through `net` as the client, under TLS when
    /// `tls` gives it with the name of the node meant (its certificate must
    /// name it, and so must the link handshake), then completes the link
    /// handshake.
    ///
    /// # Errors
    /// The socket's error, TLS's, or the handshake's.
    pub async fn connect_secured(
        net: &dyn Net,
        address: &str,
        config: LinkConfig,
        tls: Option<(&Tls, &str)>,
    ) -> Result<Self, DriverError> {
        let deadline = config.dead_after;
        #[cfg(test)]
        let deadline = if crate::sim::broken(crate::sim::Break::WaitForConnects) {
            deadline * 1000
        } else {
            deadline
        };
        // A host that is down answers nothing: without a deadline the
        // system's own (minutes of SYN retries) would hold every call
        // waiting for this link.
        let socket = tokio::time::timeout(deadline, net.connect(address))
            .await
            .map_err(|_| DriverError::ConnectTimeout(deadline))??;
        let stream = match (socket, tls) {
            (Socket::Tcp(stream), Some((tls, peer))) => {
                stream.set_nodelay(true)?;
                let secured = tokio::time::timeout(deadline, tls.connect(stream, peer)).await;
                secured.map_err(|_| DriverError::HandshakeTimeout(deadline))??
            }
            (Socket::Tcp(stream), None) => {
                stream.set_nodelay(true)?;
                Stream::Plain(stream)
            }
            (Socket::Stream(_), Some(_)) => return Err(TlsError::NotTcp.into()),
            (Socket::Stream(stream), None) => Stream::Pipe(stream),
        };
        Self::handshake(stream, Role::Client, config, tls).await
    }

    /// Completes the handshake on an accepted socket as the server.
    ///
    /// # Errors
    /// The socket's error, or the handshake's (refused, wrong secret, timeout).
    pub async fn accept(stream: TcpStream, config: LinkConfig) -> Result<Self, DriverError> {
        Self::accept_secured(Socket::Tcp(stream), config, None).await
    }

    /// Completes TLS (when `tls` is given: the client's certificate must
    /// chain to the CA and name the node it says it is) and the link
    /// handshake on an accepted socket as the server.
    ///
    /// # Errors
    /// The socket's error, TLS's, or the handshake's.
    pub async fn accept_secured(
        socket: Socket,
        config: LinkConfig,
        tls: Option<&Tls>,
    ) -> Result<Self, DriverError> {
        let stream = match socket {
            Socket::Tcp(stream) => stream,
            Socket::Stream(_) if tls.is_some() => return Err(TlsError::NotTcp.into()),
            Socket::Stream(stream) => return Self::over(stream, Role::Server, config).await,
        };
        stream.set_nodelay(true)?;
        let deadline = config.dead_after;
        let stream = match tls {
            Some(tls) => {
                let mut first = [0u8; 1];
                let peeked = tokio::time::timeout(deadline, stream.peek(&mut first)).await;
                let peeked = peeked.map_err(|_| DriverError::HandshakeTimeout(deadline))??;
                if peeked == 1 && first[0] != super::tls::HANDSHAKE_RECORD {
                    return Err(Self::refuse_plain(stream, config).await);
                }
                tokio::time::timeout(deadline, tls.accept(stream))
                    .await
                    .map_err(|_| DriverError::HandshakeTimeout(deadline))??
            }
            None => Stream::Plain(stream),
        };
        Self::handshake(stream, Role::Server, config, tls.map(|t| (t, None))).await
    }

    /// Completes the handshake as `role` over a byte stream that is not a
    /// TCP socket (a simulated network's, an in-memory pipe): a plain link.
    ///
    /// # Errors
    /// The stream's error, or the handshake's (refused, wrong secret, timeout).
    pub async fn over(
        stream: Box<dyn ByteStream>,
        role: Role,
        config: LinkConfig,
    ) -> Result<Self, DriverError> {
        Self::handshake(
            Stream::Pipe(stream),
            role,
            config,
            None::<(&Tls, Option<&str>)>,
        )
        .await
    }

    /// Tells a plain peer, in its own protocol, that this node takes TLS
    /// links only, and closes.
    async fn refuse_plain(stream: TcpStream, config: LinkConfig) -> DriverError {
        let reason = format!(
            "node `{}` takes TLS links only: give this node `tls` to reach it",
            config.name
        );
        let nonce: [u8; 32] = rand::random();
        let mut conn = Connection::<C, H> {
            stream: Stream::Plain(stream),
            link: Link::new(Role::Server, config, now(), nonce),
            backlog: None,
            stats: None,
            keep: None,
            inbuf: BytesMut::new(),
            outbuf: BytesMut::new(),
        };
        conn.link.close(reason);
        conn.say_goodbye().await;
        conn.linger().await;
        TlsError::PeerIsPlain.into()
    }

    /// The link handshake over `stream`, then (under TLS) the check that
    /// the name the peer gave is one its certificate holds and, for a
    /// client, the node it meant.
    async fn handshake<'a>(
        stream: Stream,
        role: Role,
        config: LinkConfig,
        tls: Option<(&Tls, impl Into<Option<&'a str>>)>,
    ) -> Result<Self, DriverError> {
        let deadline = config.dead_after;
        // Broken on purpose: a peer that never finishes its handshake is
        // waited for (almost) for ever.
        #[cfg(test)]
        let deadline = if crate::sim::broken(crate::sim::Break::WaitForHandshakes) {
            deadline * 1000
        } else {
            deadline
        };
        let nonce: [u8; 32] = rand::random();
        let mut conn = Connection {
            stream,
            link: Link::new(role, config, now(), nonce),
            backlog: None,
            stats: None,
            keep: None,
            inbuf: BytesMut::with_capacity(READ_CHUNK),
            outbuf: BytesMut::new(),
        };
        match tokio::time::timeout(deadline, conn.shake()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(DriverError::HandshakeTimeout(deadline)),
        }
        let claimed = conn.link.peer().map(|p| p.name.clone()).unwrap_or_default();
        let checked = match tls {
            Some((tls, expected)) => tls.check_peer(&conn.stream, &claimed, expected.into()),
            None => Ok(()),
        };
        if let Err(e) = checked {
            // Told why, the peer's side of the link ends with the reason.
            conn.link.close(e.to_string());
            conn.say_goodbye().await;
            conn.linger().await;
            return Err(e.into());
        }
        Ok(conn)
    }

    /// Writes out all the link has to send now (before [`run`](Self::run)).
    async fn transmit(&mut self) -> std::io::Result<()> {
        self.link
            .poll_transmit(now(), &mut self.outbuf, WRITE_BATCH);
        if !self.outbuf.is_empty() {
            self.stream.write_all(&self.outbuf).await?;
            self.stream.flush().await?;
            self.outbuf.clear();
        }
        Ok(())
    }

    /// Reads what the peer sent next into `inbuf` (before [`run`](Self::run)).
    async fn read_more(&mut self) -> Result<(), DriverError> {
        self.inbuf.reserve(READ_CHUNK);
        if self.stream.read_buf(&mut self.inbuf).await? == 0 {
            return Err(DriverError::Closed);
        }
        Ok(())
    }

    async fn shake(&mut self) -> Result<(), DriverError> {
        loop {
            self.transmit().await?;
            if self.link.is_up() {
                return Ok(());
            }
            self.read_more().await?;
            if !matches!(self.stream, Stream::Tls(_)) && super::tls::is_tls_record(&self.inbuf) {
                return Err(TlsError::PeerSpeaksTls.into());
            }
            if let Err(e) = self.link.handle_bytes(now(), &mut self.inbuf) {
                self.say_goodbye().await;
                return Err(e.into());
            }
        }
    }

    /// Writes what the link has to say after an error (a `Refused` frame),
    /// without waiting long for a peer that does not read.
    async fn say_goodbye(&mut self) {
        // What is left of a partly written frame goes first, so the peer
        // reads the refusal as a whole frame.
        self.link
            .poll_transmit(now(), &mut self.outbuf, WRITE_BATCH);
        if !self.outbuf.is_empty() {
            let stream = &mut self.stream;
            let outbuf = &self.outbuf;
            let write = async move {
                stream.write_all(outbuf).await?;
                stream.flush().await
            };
            let _ = tokio::time::timeout(Duration::from_millis(200), write).await;
        }
    }

    /// Closes this end's writing and reads until the peer closes (briefly):
    /// a socket closed with bytes unread resets the connection, and a reset
    /// can destroy the refusal just written before the peer reads it.
    async fn linger(&mut self) {
        let stream = &mut self.stream;
        let drain = async move {
            let _ = stream.shutdown().await;
            let mut sink = [0u8; 4096];
            while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
        };
        let _ = tokio::time::timeout(Duration::from_millis(200), drain).await;
    }

    /// The peer, as it named itself in the handshake.
    pub fn peer(&self) -> Option<&PeerInfo> {
        self.link.peer()
    }

    /// The peer's socket address.
    pub fn peer_address(&self) -> Option<std::net::SocketAddr> {
        self.stream.tcp().and_then(|t| t.peer_addr()).ok()
    }

    /// Keeps `backlog` down by the [`weight`](Outgoing::weight) of each item
    /// [`run`](Self::run) takes off the outgoing channel; the senders count
    /// it up, so together it is the weight waiting (a bound for senders
    /// that must not queue without limit).
    pub fn with_backlog(mut self, backlog: std::sync::Arc<std::sync::atomic::AtomicUsize>) -> Self {
        self.backlog = Some(backlog);
        self
    }

    /// Keeps `stats` current while the connection runs.
    #[must_use]
    pub fn with_stats(mut self, stats: std::sync::Arc<LinkStats>) -> Self {
        self.stats = Some(stats);
        self
    }

    /// Numbers and keeps, through `keep`, the messages [`run`](Self::run)
    /// writes that `keep` asks for.
    #[must_use]
    pub fn with_keep(mut self, keep: Box<dyn Keep<H>>) -> Self {
        self.keep = Some(keep);
        self
    }

    /// Sends `control` and waits for the peer's first control message,
    /// within `within`: both ends of a layer that says something before
    /// any message (harbor's resume) call this before [`run`](Self::run).
    ///
    /// # Errors
    /// The socket's, the link's, a message before the control, a silent
    /// peer.
    pub async fn exchange(&mut self, control: C, within: Duration) -> Result<C, DriverError> {
        self.link.send_control(control);
        self.first_control(within).await
    }

    /// Waits for the peer's first control message, within `within`, what
    /// this end queued going out meanwhile: a layer whose first word
    /// depends on the peer's calls this, then [`send_control`](Self::send_control).
    ///
    /// # Errors
    /// As [`exchange`](Self::exchange).
    pub async fn first_control(&mut self, within: Duration) -> Result<C, DriverError> {
        let exchange = async {
            loop {
                self.transmit().await?;
                while let Some(event) = self.link.poll_event() {
                    match event {
                        LinkEvent::Control(c) => return Ok(c),
                        LinkEvent::Message { .. } => {
                            return Err(DriverError::Refused(
                                "a message came before the peer's first control".into(),
                            ));
                        }
                        LinkEvent::Up(_) => {}
                    }
                }
                self.read_more().await?;
                self.link.handle_bytes(now(), &mut self.inbuf)?;
            }
        };
        tokio::time::timeout(within, exchange)
            .await
            .map_err(|_| DriverError::HandshakeTimeout(within))?
    }

    /// Queues a control message to go out first once [`run`](Self::run) starts.
    pub fn send_control(&mut self, control: C) {
        self.link.send_control(control);
    }

    /// Queues a message or control to go out once [`run`](Self::run) starts.
    pub fn send(&mut self, item: Outgoing<C, H>) {
        // Numbered and kept as `run` does, once a keeper is set: what
        // an owner queues first may be lost with the link too.
        match self.keep.as_deref_mut() {
            Some(keep) => push_keeping(&mut self.link, item, keep),
            None => push(&mut self.link, item),
        }
    }

    /// Carries messages both ways until the peer closes, the link fails,
    /// `outgoing` is closed, or `cancel` fires.
    ///
    /// What is still in `outgoing` when it returns stays there, so the
    /// owner can answer it (fail the requests) or send it on a new
    /// connection.
    ///
    /// # Errors
    /// Why the connection ended, unless it was closed on purpose.
    pub async fn run<L: LinkHandler<C, H>>(
        mut self,
        outgoing: &mut mpsc::UnboundedReceiver<Outgoing<C, H>>,
        handler: &mut L,
        cancel: &CancellationToken,
    ) -> Result<(), DriverError> {
        use std::sync::atomic::Ordering;
        self.stream = rehome(self.stream)?;
        if let Some(s) = &self.stats {
            s.up.store(true, Ordering::Relaxed);
            s.connections.fetch_add(1, Ordering::Relaxed);
        }
        let result = self.pump(outgoing, handler, cancel).await;
        if let Some(s) = &self.stats {
            s.up.store(false, Ordering::Relaxed);
        }
        if let Err(DriverError::Refused(_)) = &result {
            // The handler's last words (why it refused) go out before the close.
            while let Ok(item) = outgoing.try_recv() {
                if let Outgoing::Control(c) = item {
                    self.link.send_control(c);
                }
            }
        }
        if matches!(result, Err(DriverError::Link(_) | DriverError::Refused(_))) {
            self.say_goodbye().await;
        }
        result
    }

    async fn pump<L: LinkHandler<C, H>>(
        &mut self,
        outgoing: &mut mpsc::UnboundedReceiver<Outgoing<C, H>>,
        handler: &mut L,
        cancel: &CancellationToken,
    ) -> Result<(), DriverError> {
        let mut parts = Parts {
            link: &mut self.link,
            backlog: self.backlog.as_deref(),
            stats: self.stats.as_deref(),
            keep: self.keep.as_deref_mut(),
            inbuf: &mut self.inbuf,
            outbuf: &mut self.outbuf,
        };
        match &mut self.stream {
            Stream::Plain(tcp) => {
                let (reader, writer) = tcp.split();
                parts
                    .pump(reader, writer, false, outgoing, handler, cancel)
                    .await
            }
            // TLS, or a pipe that may buffer what it is given: flushed.
            other => {
                let (reader, writer) = tokio::io::split(other);
                parts
                    .pump(reader, writer, true, outgoing, handler, cancel)
                    .await
            }
        }
    }
}

/// A running connection's state beside its socket, so the socket's two
/// halves and the rest can be borrowed at once.
struct Parts<'a, C, H> {
    link: &'a mut Link<C, H>,
    backlog: Option<&'a std::sync::atomic::AtomicUsize>,
    stats: Option<&'a LinkStats>,
    keep: Option<&'a mut (dyn Keep<H> + 'static)>,
    inbuf: &'a mut BytesMut,
    outbuf: &'a mut BytesMut,
}

impl<C, H> Parts<'_, C, H>
where
    C: Serialize + DeserializeOwned,
    H: Serialize + DeserializeOwned + Clone + std::fmt::Debug,
{
    /// Moves bytes until the connection ends. Under TLS or over a pipe
    /// (`flushing`) what
    /// was written is flushed once the buffer is empty: rustls keeps
    /// records until then.
    async fn pump<L: LinkHandler<C, H>>(
        &mut self,
        mut reader: impl AsyncRead + Unpin,
        mut writer: impl AsyncWrite + Unpin,
        flushing: bool,
        outgoing: &mut mpsc::UnboundedReceiver<Outgoing<C, H>>,
        handler: &mut L,
        cancel: &CancellationToken,
    ) -> Result<(), DriverError> {
        let mut batch = Vec::with_capacity(RECV_BATCH);
        let mut frames_counted = self.link.frames_in();
        let mut unflushed = false;
        loop {
            while let Some(event) = self.link.poll_event() {
                match event {
                    LinkEvent::Message { envelope, payload } => {
                        handler.on_message(envelope, payload);
                    }
                    LinkEvent::Control(c) => handler.on_control(c).map_err(DriverError::Refused)?,
                    LinkEvent::Up(_) => {}
                }
            }
            if self.outbuf.len() < WRITE_BATCH && self.link.has_transmit() {
                self.link.poll_transmit(now(), self.outbuf, WRITE_BATCH);
            }
            let timeout = self.link.poll_timeout().map(tokio::time::Instant::from_std);
            self.inbuf.reserve(READ_CHUNK);
            tokio::select! {
                biased;
                () = cancel.cancelled() => return Ok(()),
                written = write_or_flush(&mut writer, self.outbuf), if !self.outbuf.is_empty() || unflushed => {
                    if let Some(n) = written? {
                        self.outbuf.advance(n);
                        unflushed = flushing;
                        if let Some(s) = self.stats {
                            s.bytes_out.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                        }
                    } else {
                        unflushed = false;
                    }
                }
                read = reader.read_buf(self.inbuf) => {
                    let n = read?;
                    if n == 0 {
                        return Err(DriverError::Closed);
                    }
                    self.link.handle_bytes(now(), self.inbuf)?;
                    if let Some(s) = self.stats {
                        use std::sync::atomic::Ordering::Relaxed;
                        s.bytes_in.fetch_add(n as u64, Relaxed);
                        let frames = self.link.frames_in();
                        s.frames_in.fetch_add(frames - frames_counted, Relaxed);
                        frames_counted = frames;
                        if let Some(rtt) = self.link.rtt() {
                            let us = u64::try_from(rtt.as_micros()).unwrap_or(u64::MAX).max(1);
                            s.rtt_us.store(us, Relaxed);
                        }
                    }
                }
                n = outgoing.recv_many(&mut batch, RECV_BATCH), if self.outbuf.len() < WRITE_BATCH => {
                    if n == 0 {
                        return Ok(());
                    }
                    for item in batch.drain(..) {
                        if let Some(b) = self.backlog {
                            b.fetch_sub(item.weight(), std::sync::atomic::Ordering::Relaxed);
                        }
                        match self.keep.as_deref_mut() {
                            Some(keep) => push_keeping(self.link, item, keep),
                            None => push(self.link, item),
                        }
                    }
                }
                () = sleep_until(timeout), if timeout.is_some() => {
                    self.link.handle_timeout(now())?;
                }
            }
        }
    }
}

/// Queues an outgoing item on a link.
fn push<C, H>(link: &mut Link<C, H>, item: Outgoing<C, H>)
where
    C: Serialize + DeserializeOwned,
    H: Serialize + DeserializeOwned + Clone + std::fmt::Debug,
{
    match item {
        Outgoing::Message(header, payload) => {
            link.send_message(header, payload);
        }
        Outgoing::Control(c) => link.send_control(c),
    }
}

/// [`push`], numbering and keeping the messages `keep` asks for: a payload
/// the link copies into a frame is kept as it comes back, one the link
/// holds until it is written in chunks is kept as a copy.
fn push_keeping<C, H>(link: &mut Link<C, H>, item: Outgoing<C, H>, keep: &mut dyn Keep<H>)
where
    C: Serialize + DeserializeOwned,
    H: Serialize + DeserializeOwned + Clone + std::fmt::Debug,
{
    let Outgoing::Message(mut header, payload) = item else {
        return push(link, item);
    };
    // A payload the link refuses takes no number: the peer could never
    // acknowledge it, and every number after it would be kept for good.
    if link.refuses(payload.len()) || !keep.number(&mut header) {
        link.send_message(header, payload);
        return;
    }
    let copy = link.holds(payload.len()).then(|| payload.clone());
    let kept = header.clone();
    if let Some(payload) = link.send_message(header, payload).or(copy) {
        keep.keep(kept, payload);
    }
}

/// Writes some of `outbuf`, or flushes when it is empty; the bytes
/// written, `None` for a flush.
async fn write_or_flush(
    writer: &mut (impl AsyncWrite + Unpin),
    outbuf: &[u8],
) -> std::io::Result<Option<usize>> {
    if outbuf.is_empty() {
        writer.flush().await.map(|()| None)
    } else {
        writer.write(outbuf).await.map(Some)
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    /// Hands each message's payload to a channel.
    struct Collect(mpsc::UnboundedSender<Vec<u8>>);

    impl LinkHandler<String> for Collect {
        fn on_message(&mut self, _: Envelope, payload: Vec<u8>) {
            let _ = self.0.send(payload);
        }

        fn on_control(&mut self, _: String) -> Result<(), String> {
            Ok(())
        }
    }

    fn config(name: &str) -> LinkConfig {
        LinkConfig::new("skyhost-test", name, Arc::from(&b"pipe secret"[..]))
    }

    /// The silence deadline of [`pair`]'s links.
    const SILENT_AFTER: Duration = Duration::from_secs(60);

    /// Two connections whose handshake is done over an in-memory pipe.
    async fn pair() -> (Connection<String>, Connection<String>) {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let config = |name| LinkConfig {
            dead_after: SILENT_AFTER,
            ..config(name)
        };
        let (client, server) = tokio::join!(
            Connection::<String>::over(Box::new(a), Role::Client, config("a")),
            Connection::<String>::over(Box::new(b), Role::Server, config("b")),
        );
        match (client, server) {
            (Ok(c), Ok(s)) => (c, s),
            (c, s) => panic!("handshake over a pipe: {:?} / {:?}", c.err(), s.err()),
        }
    }

    /// Both ends of [`pair`] running: what is sent to the client's channel
    /// arrives in `got`, on the server; `cancel` ends both.
    struct Running {
        to_server: mpsc::UnboundedSender<Outgoing<String>>,
        got: mpsc::UnboundedReceiver<Vec<u8>>,
        cancel: CancellationToken,
        serving: tokio::task::JoinHandle<Result<(), DriverError>>,
        sending: tokio::task::JoinHandle<Result<(), DriverError>>,
    }

    fn run_both(client: Connection<String>, server: Connection<String>) -> Running {
        let cancel = CancellationToken::new();
        let (got_tx, got) = mpsc::unbounded_channel();
        let serving = tokio::spawn({
            let cancel = cancel.clone();
            async move {
                let (_keep, mut none) = mpsc::unbounded_channel();
                server.run(&mut none, &mut Collect(got_tx), &cancel).await
            }
        });
        let (to_server, mut outgoing) = mpsc::unbounded_channel();
        let sending = tokio::spawn({
            let cancel = cancel.clone();
            async move {
                let (ignored, _) = mpsc::unbounded_channel();
                client
                    .run(&mut outgoing, &mut Collect(ignored), &cancel)
                    .await
            }
        });
        Running {
            to_server,
            got,
            cancel,
            serving,
            sending,
        }
    }

    impl Running {
        /// The next payload the server got, within 10 s.
        async fn next(&mut self) -> Option<Vec<u8>> {
            let got = tokio::time::timeout(Duration::from_secs(10), self.got.recv()).await;
            got.ok().flatten()
        }

        /// Ends both; each ended as asked.
        async fn stop(self) {
            self.cancel.cancel();
            assert!(matches!(self.serving.await, Ok(Ok(()))));
            assert!(matches!(self.sending.await, Ok(Ok(()))));
        }
    }

    const TO_2: Envelope = Envelope {
        dest: 2,
        source: 1,
        session: 0,
        kind: 0,
        tenant: 0,
        trace: 0,
        seq: 0,
        batched: 0,
    };

    #[tokio::test]
    async fn a_link_runs_over_any_byte_stream() {
        let (client, server) = pair().await;
        assert_eq!(client.peer().map(|p| p.name.as_str()), Some("b"));
        assert!(
            client.peer_address().is_none(),
            "a pipe has no socket address"
        );
        let mut running = run_both(client, server);
        // One small and one chunked payload, in order.
        let large = vec![7u8; 3 * LinkConfig::DEFAULT_CHUNK_SIZE];
        for payload in [b"over a pipe".to_vec(), large.clone()] {
            let _ = running.to_server.send(Outgoing::Message(TO_2, payload));
        }
        assert_eq!(running.next().await.as_deref(), Some(&b"over a pipe"[..]));
        assert_eq!(running.next().await, Some(large));
        running.stop().await;
    }

    /// Numbers every message and records what it keeps.
    struct Recorder {
        next: u64,
        kept: Arc<std::sync::Mutex<Vec<(u64, usize)>>>,
    }

    impl Keep<Envelope> for Recorder {
        fn number(&mut self, header: &mut Envelope) -> bool {
            self.next += 1;
            header.seq = self.next;
            true
        }

        fn keep(&mut self, header: Envelope, payload: Vec<u8>) {
            let mut kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
            kept.push((header.seq, payload.len()));
        }
    }

    /// What an owner queues with `send` before `run` (what waited for the
    /// link) is numbered and kept as what `run` takes is, once a keeper is
    /// set: it may be lost with the link as well.
    #[tokio::test]
    async fn what_is_queued_before_run_is_numbered_too() {
        let (client, server) = pair().await;
        let kept = Arc::default();
        let mut client = client.with_keep(Box::new(Recorder {
            next: 0,
            kept: Arc::clone(&kept),
        }));
        client.send(Outgoing::Message(TO_2, b"waited".to_vec()));
        let mut running = run_both(client, server);
        let _ = running
            .to_server
            .send(Outgoing::Message(TO_2, b"later".to_vec()));
        assert_eq!(running.next().await.as_deref(), Some(&b"waited"[..]));
        assert_eq!(running.next().await.as_deref(), Some(&b"later"[..]));
        running.stop().await;
        let kept = kept.lock().unwrap_or_else(|e| e.into_inner()).clone();
        assert_eq!(kept, vec![(1, 6), (2, 5)]);
    }

    /// Both ends say their first word, and each hears the other's.
    #[tokio::test]
    async fn both_ends_exchange_a_first_control() {
        let (mut client, mut server) = pair().await;
        let within = Duration::from_secs(10);
        let (heard_by_client, heard_by_server) = tokio::join!(
            client.exchange("from a".to_string(), within),
            server.exchange("from b".to_string(), within),
        );
        assert_eq!(heard_by_client.ok().as_deref(), Some("from b"));
        assert_eq!(heard_by_server.ok().as_deref(), Some("from a"));
    }

    /// The owner's keeper numbers messages in the order the link takes
    /// them and keeps each as written (a chunked one as a copy); a payload
    /// the link refuses takes no number.
    #[tokio::test]
    async fn kept_messages_are_numbered_in_order_and_a_refused_one_is_not() {
        let (client, server) = pair().await;
        let kept = Arc::default();
        let client = client.with_keep(Box::new(Recorder {
            next: 0,
            kept: Arc::clone(&kept),
        }));
        let mut running = run_both(client, server);
        let refused = vec![0u8; LinkConfig::new("p", "n", Arc::from(&b""[..])).max_payload + 1];
        let large = vec![7u8; 3 * LinkConfig::DEFAULT_CHUNK_SIZE];
        for payload in [b"small".to_vec(), refused, large.clone()] {
            let _ = running.to_server.send(Outgoing::Message(TO_2, payload));
        }
        assert_eq!(running.next().await.as_deref(), Some(&b"small"[..]));
        assert_eq!(running.next().await, Some(large.clone()));
        running.stop().await;
        let kept = kept.lock().unwrap_or_else(|e| e.into_inner()).clone();
        assert_eq!(kept, vec![(1, 5), (2, large.len())]);
    }

    /// The link's silence deadline runs on tokio's clock: with the clock
    /// paused, a peer that stops answering is found dead after exactly
    /// `dead_after` of simulated time, and without waiting for it on the
    /// system's clock (which a link on the system's clock has to: it spins
    /// until the real minute has passed).
    #[tokio::test(start_paused = true)]
    async fn a_silent_peer_is_dead_after_dead_after_on_tokios_clock() {
        let (client, server) = pair().await;
        let start = tokio::time::Instant::now();
        let real = std::time::Instant::now();
        let cancel = CancellationToken::new();
        let (_keep, mut outgoing) = mpsc::unbounded_channel();
        let (ignored, _) = mpsc::unbounded_channel();
        // The server's end stays open but nothing runs it: it reads nothing
        // and answers no heartbeat.
        let ran = tokio::time::timeout(
            Duration::from_secs(600),
            client.run(&mut outgoing, &mut Collect(ignored), &cancel),
        )
        .await;
        let after = start.elapsed();
        match ran {
            Ok(Err(DriverError::Link(LinkError::PeerSilent { .. }))) => {}
            Ok(other) => panic!("expected a silent peer, got {other:?}"),
            Err(_) => panic!("the silence deadline never fired on tokio's clock"),
        }
        let dead_after = SILENT_AFTER;
        assert!(
            after >= dead_after && after < dead_after + LinkConfig::DEFAULT_HEARTBEAT,
            "dead after {after:?}"
        );
        assert!(
            real.elapsed() < dead_after / 2,
            "the link waited {:?} of the system's clock",
            real.elapsed()
        );
        drop(server);
    }
}

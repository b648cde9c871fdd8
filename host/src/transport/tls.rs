//! TLS 1.3 under a link (rustls, mutual authentication): the socket is
//! wrapped before the link's own handshake, which then runs inside it
//! unchanged (the sans-io core never sees TLS). Each node has a certificate
//! naming it (a DNS name equal to its node name) signed by the fleet's CA;
//! peers verify each other against that CA. The name a peer claims in the
//! link's handshake must be one its certificate is valid for, so a node
//! cannot pose as another; a client also checks that it reached the node
//! it meant to (the TLS server name it asked for).
//!
//! Why rustls' tokio wrapper and not its sans-io API under `Link`: the
//! driver's byte pump stays one loop over an `AsyncRead`/`AsyncWrite` pair,
//! and the plain path is untouched (no extra copy for a loopback link).

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

pub use crate::config::TlsFiles;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Why TLS could not be set up or a peer was refused.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate, key or CA file cannot be read or holds no PEM item.
    #[error("{what} {}: {why}", path.display())]
    File {
        /// `certificate`, `key` or `CA`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// rustls refused the certificate, key or CA (a key that does not
    /// match, an unsupported algorithm).
    #[error("TLS setup: {0}")]
    Setup(String),
    /// The TLS handshake with a peer failed (its certificate is from
    /// another CA, expired, names another node; it speaks no TLS).
    #[error("TLS handshake: {0}")]
    Handshake(std::io::Error),
    /// A plain link got TLS back: the peer requires TLS and this node
    /// has none set.
    #[error("the peer speaks TLS and this node's links are plain (set `tls` to reach it)")]
    PeerSpeaksTls,
    /// A TLS node got a plain link handshake: the peer has no `tls` set.
    #[error(
        "the peer does not speak TLS (a node without `tls`?), and this node takes TLS links only"
    )]
    PeerIsPlain,
    /// TLS was asked for over a socket that is not TCP (a simulated
    /// network's): TLS is tested over real sockets.
    #[error("TLS runs over TCP sockets only, and this link's socket is not one")]
    NotTcp,
    /// The node name a peer gave in the link handshake is not one its
    /// certificate names, or not the node this end meant to reach.
    #[error("peer claims to be `{claimed}`: {why}")]
    Name {
        /// The name it gave.
        claimed: String,
        /// Why that is refused.
        why: String,
    },
}

/// A node's TLS identity and trust, ready for links both ways.
#[derive(Clone)]
pub struct Tls {
    connector: tokio_rustls::TlsConnector,
    acceptor: tokio_rustls::TlsAcceptor,
    /// This node's own certificate, to check which names it holds.
    own: CertificateDer<'static>,
    /// Put before a link name to make the name a certificate must hold:
    /// empty for cluster nodes (their names are DNS names already),
    /// `harbor-` for harbor links, whose names are ids (`3`, `master`).
    prefix: &'static str,
}

/// What a harbor link name becomes in a certificate: `harbor-3` for harbor
/// id 3, `harbor-master` for the master.
pub const HARBOR_PREFIX: &str = "harbor-";

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tls")
    }
}

impl Tls {
    /// Reads the files and builds client and server settings: TLS 1.3
    /// only, each side presenting its certificate and requiring the
    /// other's, chained to the CA.
    ///
    /// # Errors
    /// A file that cannot be read or parsed, or settings rustls refuses.
    pub fn load(files: &TlsFiles) -> Result<Self, TlsError> {
        Self::load_checking(files, true)
    }

    /// [`Tls::load`] for an operator reaching a control address: as a
    /// client it takes a server certificate of any name the CA signed
    /// (an operator dials an address, and may not know the node's name).
    ///
    /// # Errors
    /// As [`Tls::load`].
    pub fn load_operator(files: &TlsFiles) -> Result<Self, TlsError> {
        Self::load_checking(files, false)
    }

    fn load_checking(files: &TlsFiles, server_names: bool) -> Result<Self, TlsError> {
        let certs = read_certs("certificate", &files.cert)?;
        let own = certs[0].clone();
        let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| TlsError::File {
            what: "key",
            path: files.key.clone(),
            why: e.to_string(),
        })?;
        let mut roots = rustls::RootCertStore::empty();
        for ca in read_certs("CA", &files.ca)? {
            roots.add(ca).map_err(|e| TlsError::File {
                what: "CA",
                path: files.ca.clone(),
                why: e.to_string(),
            })?;
        }
        let roots = Arc::new(roots);
        // ring, not aws-lc-rs: it builds with a C compiler alone. rustls
        // marks it deprecated for lacking post-quantum key exchange.
        #[expect(
            deprecated,
            reason = "ring's provider has no post-quantum key exchange"
        )]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let setup = |e: rustls::Error| TlsError::Setup(e.to_string());
        let any_name = AnyNameOfTheCa(
            rustls::client::WebPkiServerVerifier::builder_with_provider(
                roots.clone(),
                provider.clone(),
            )
            .build()
            .map_err(|e| TlsError::Setup(e.to_string()))?,
        );
        any_name.check_dates(&certs, &files.cert)?;
        let client = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(setup)?;
        let client = if server_names {
            client.with_root_certificates(roots.clone())
        } else {
            client
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(any_name))
        };
        let client = client
            .with_client_auth_cert(certs.clone(), key.clone_key())
            .map_err(setup)?;
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
                .build()
                .map_err(|e| TlsError::Setup(e.to_string()))?;
        let server = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(setup)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs, key)
            .map_err(setup)?;
        Ok(Tls {
            connector: tokio_rustls::TlsConnector::from(Arc::new(client)),
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(server)),
            own,
            prefix: "",
        })
    }

    /// The same identity for harbor links: link names are harbor ids, and
    /// the certificate of id N names `harbor-N` (the master's,
    /// `harbor-master`).
    #[must_use]
    pub fn for_harbor(mut self) -> Self {
        self.prefix = HARBOR_PREFIX;
        self
    }

    /// The name a certificate must hold for the link name `link_name`.
    pub fn certificate_name(&self, link_name: &str) -> String {
        format!("{}{link_name}", self.prefix)
    }

    /// Checks that this node's own certificate names `link_name` (as
    /// [`Tls::certificate_name`] spells it), so a misnamed certificate
    /// fails at start and not at every peer.
    ///
    /// # Errors
    /// [`TlsError::Name`] saying which name is missing.
    pub fn check_own_name(&self, link_name: &str) -> Result<(), TlsError> {
        let wanted = self.certificate_name(link_name);
        names_in(&self.own, &wanted).map_err(|why| TlsError::Name {
            claimed: link_name.to_string(),
            why: format!("this node's own certificate {why}"),
        })
    }

    /// TLS as the client to the node named `peer`, whose certificate must
    /// name it.
    ///
    /// # Errors
    /// [`TlsError::Handshake`], or a `peer` that is no DNS name.
    pub async fn connect(&self, stream: TcpStream, peer: &str) -> Result<Stream, TlsError> {
        let name =
            ServerName::try_from(self.certificate_name(peer)).map_err(|e| TlsError::Name {
                claimed: peer.to_string(),
                why: format!("not a name a certificate can hold: {e}"),
            })?;
        let tls = self
            .connector
            .connect(name, Socket(Some(stream)))
            .await
            .map_err(TlsError::Handshake)?;
        Ok(Stream::Tls(Box::new(tokio_rustls::TlsStream::Client(tls))))
    }

    /// TLS as the server; the client's certificate must chain to the CA.
    ///
    /// # Errors
    /// [`TlsError::Handshake`].
    pub async fn accept(&self, stream: TcpStream) -> Result<Stream, TlsError> {
        let tls = self
            .acceptor
            .accept(Socket(Some(stream)))
            .await
            .map_err(|e| {
                let plain = e
                    .get_ref()
                    .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                    .is_some_and(|r| {
                        matches!(
                            r,
                            rustls::Error::InvalidMessage(
                                rustls::InvalidMessage::InvalidContentType
                            )
                        )
                    });
                if plain {
                    TlsError::PeerIsPlain
                } else {
                    TlsError::Handshake(e)
                }
            })?;
        Ok(Stream::Tls(Box::new(tokio_rustls::TlsStream::Server(tls))))
    }
    /// Checks that `claimed`, the name the peer gave in the link handshake
    /// on `stream`, is one its certificate names (as
    /// [`Tls::certificate_name`] spells it), and (a client's `expected`) the
    /// node this end meant to reach. A plain stream has nothing to check.
    ///
    /// # Errors
    /// [`TlsError::Name`] saying which check failed.
    pub fn check_peer(
        &self,
        stream: &Stream,
        claimed: &str,
        expected: Option<&str>,
    ) -> Result<(), TlsError> {
        let Stream::Tls(tls) = stream else {
            return Ok(());
        };
        let refused = |why: String| TlsError::Name {
            claimed: claimed.to_string(),
            why,
        };
        if let Some(expected) = expected
            && expected != claimed
        {
            return Err(refused(format!("this node meant to reach `{expected}`")));
        }
        let cert = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .ok_or_else(|| refused("it showed no certificate".into()))?;
        names_in(cert, &self.certificate_name(claimed))
            .map_err(|why| refused(format!("its certificate {why}")))
    }
}

/// Verifies a server's certificate as webpki does (chain to the CA,
/// validity, signatures) except for the name it holds.
#[derive(Debug)]
struct AnyNameOfTheCa(Arc<rustls::client::WebPkiServerVerifier>);

impl AnyNameOfTheCa {
    /// Refuses this node's own certificate when it has expired or is not
    /// valid yet: every peer would refuse it, so the node says so at start.
    /// Other faults are the peers' to judge (a CA file may hold only the
    /// peers' CA).
    fn check_dates(&self, chain: &[CertificateDer<'static>], path: &Path) -> Result<(), TlsError> {
        use rustls::CertificateError as E;
        use rustls::client::danger::ServerCertVerifier;
        let Some((own, intermediates)) = chain.split_first() else {
            return Ok(());
        };
        let any = ServerName::try_from("node").map_err(|e| TlsError::Setup(e.to_string()))?;
        let now = rustls::pki_types::UnixTime::now();
        match self.verify_server_cert(own, intermediates, &any, &[], now) {
            Err(rustls::Error::InvalidCertificate(e)) => {
                let why = match e {
                    E::Expired | E::ExpiredContext { .. } => "it has expired",
                    E::NotValidYet | E::NotValidYetContext { .. } => "it is not valid yet",
                    _ => return Ok(()),
                };
                Err(TlsError::File {
                    what: "certificate",
                    path: path.to_path_buf(),
                    why: format!("{why} (make a new one: skyhost cert node)"),
                })
            }
            _ => Ok(()),
        }
    }
}

impl rustls::client::danger::ServerCertVerifier for AnyNameOfTheCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        use rustls::{CertificateError, Error};
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            // Name checks come after the chain's in webpki: a certificate
            // refused only for its name chained to the CA and is valid.
            Err(Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(rustls::client::danger::ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// Whether `cert` is valid for the DNS name `wanted`; the error completes
/// "its certificate ...".
fn names_in(cert: &CertificateDer<'_>, wanted: &str) -> Result<(), String> {
    let name = ServerName::try_from(wanted)
        .map_err(|e| format!("cannot name `{wanted}`: not a DNS name ({e})"))?;
    webpki::EndEntityCert::try_from(cert)
        .and_then(|c| c.verify_is_valid_for_subject_name(&name))
        .map_err(|e| format!("does not name `{wanted}` ({e:?})"))
}

fn read_certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let file = |why: String| TlsError::File {
        what,
        path: path.to_path_buf(),
        why,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file(e.to_string()))?;
    if certs.is_empty() {
        return Err(file("no certificate in it".into()));
    }
    Ok(certs)
}

/// The first byte of a TLS client's first record (a handshake record).
pub const HANDSHAKE_RECORD: u8 = 0x16;

/// Whether `bytes`, the first a plain link read, start a TLS record (an
/// alert or a handshake, TLS 1.x): what a TLS node answers a plain hello.
pub fn is_tls_record(bytes: &[u8]) -> bool {
    matches!(bytes, [0x15 | 0x16, 0x03, 0x01..=0x04, ..])
}

/// Checks that `node` can be named in a certificate (a DNS name: letters,
/// digits, `-`, `_` and dots), as a TLS node's name must be.
///
/// # Errors
/// [`TlsError::Name`] saying why not.
pub fn check_node_name(node: &str) -> Result<(), TlsError> {
    match ServerName::try_from(node) {
        Ok(ServerName::DnsName(_)) => Ok(()),
        Ok(_) => Err(TlsError::Name {
            claimed: node.to_string(),
            why: "an IP address is no node name".into(),
        }),
        Err(e) => Err(TlsError::Name {
            claimed: node.to_string(),
            why: format!("not a name a certificate can hold: {e}"),
        }),
    }
}

/// A link's socket: plain, or under TLS.
pub enum Stream {
    /// TCP as it is (loopback development, or links with no `tls`).
    Plain(TcpStream),
    /// TCP under TLS 1.3.
    Tls(Box<tokio_rustls::TlsStream<Socket>>),
    /// A byte stream that is not a TCP socket: a simulated network's
    /// (docs/simulation.md) or an in-memory pipe; plain, and never moved.
    Pipe(Box<dyn ByteStream>),
}

/// What a link can run over besides TCP: any ordered, reliable byte stream.
pub trait ByteStream: AsyncRead + AsyncWrite + Send + Unpin {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin> ByteStream for T {}

/// The TCP socket under a TLS stream, which can be moved to another
/// runtime's reactor in place (tokio-rustls gives the socket back only
/// with the session, and takes no pair to rebuild from).
pub struct Socket(Option<TcpStream>);

impl Socket {
    fn tcp(&self) -> std::io::Result<&TcpStream> {
        self.0.as_ref().ok_or_else(moved)
    }

    fn tcp_mut(&mut self) -> std::io::Result<&mut TcpStream> {
        self.0.as_mut().ok_or_else(moved)
    }

    /// Registers the socket with the reactor of the runtime this runs on.
    fn rehome(&mut self) -> std::io::Result<()> {
        let tcp = self.0.take().ok_or_else(moved)?;
        self.0 = Some(TcpStream::from_std(tcp.into_std()?)?);
        Ok(())
    }
}

/// What a [`Socket`] says if it lost its TCP socket (a failed rehome).
fn moved() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::NotConnected,
        "the socket was lost moving it",
    )
}

impl AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut().tcp_mut() {
            Ok(s) => Pin::new(s).poll_read(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut().tcp_mut() {
            Ok(s) => Pin::new(s).poll_write(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut().tcp_mut() {
            Ok(s) => Pin::new(s).poll_flush(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut().tcp_mut() {
            Ok(s) => Pin::new(s).poll_shutdown(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl Stream {
    /// The TCP socket underneath.
    ///
    /// # Errors
    /// When a failed move lost it.
    pub fn tcp(&self) -> std::io::Result<&TcpStream> {
        match self {
            Stream::Plain(s) => Ok(s),
            Stream::Tls(t) => t.get_ref().0.tcp(),
            Stream::Pipe(_) => Err(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                "the link runs over a pipe, not a TCP socket",
            )),
        }
    }

    /// The same stream registered with the reactor of the runtime this runs
    /// on (see `driver::rehome`).
    pub(super) fn rehome(self) -> std::io::Result<Self> {
        Ok(match self {
            Stream::Plain(s) => Stream::Plain(TcpStream::from_std(s.into_std()?)?),
            Stream::Tls(mut t) => {
                t.get_mut().0.rehome()?;
                Stream::Tls(t)
            }
            Stream::Pipe(p) => Stream::Pipe(p),
        })
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(t) => Pin::new(&mut **t).poll_read(cx, buf),
            Stream::Pipe(p) => Pin::new(&mut **p).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(t) => Pin::new(&mut **t).poll_write(cx, buf),
            Stream::Pipe(p) => Pin::new(&mut **p).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(t) => Pin::new(&mut **t).poll_flush(cx),
            Stream::Pipe(p) => Pin::new(&mut **p).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(t) => Pin::new(&mut **t).poll_shutdown(cx),
            Stream::Pipe(p) => Pin::new(&mut **p).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tls_record_is_told_from_a_link_frame() {
        // An alert and a server hello, TLS 1.2 record versions.
        assert!(is_tls_record(&[0x15, 0x03, 0x03, 0x00, 0x02]));
        assert!(is_tls_record(&[0x16, 0x03, 0x01]));
        // A link frame of 0x0315 bytes: its length's third byte is 0.
        assert!(!is_tls_record(&[0x15, 0x03, 0x00, 0x00]));
        assert!(!is_tls_record(&[0x16]));
    }

    #[test]
    fn node_names_must_be_dns_names() {
        assert!(check_node_name("game-1.eu").is_ok());
        assert!(check_node_name("127.0.0.1").is_err());
        assert!(check_node_name("two words").is_err());
    }

    #[test]
    fn missing_and_empty_files_are_named() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "")?;
        let files = TlsFiles {
            cert: empty.clone(),
            key: dir.path().join("none.key"),
            ca: empty.clone(),
        };
        let err = Tls::load(&files).expect_err("no certificate");
        assert!(
            err.to_string().contains("empty.pem: no certificate"),
            "{err}"
        );
        Ok(())
    }
}

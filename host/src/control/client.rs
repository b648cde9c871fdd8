//! The client side of a control address: one authenticated connection
//! (`skyhost ctl`, `skyhost tenant`, `skyhost console`), plain or under
//! TLS with an operator's certificate.

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use super::proto::Answer;
use crate::transport::tls::{Stream, Tls};

type Reader = Box<dyn AsyncRead + Send + Unpin>;
type Writer = Box<dyn AsyncWrite + Send + Unpin>;

/// A client of a node's control address: one authenticated connection,
/// one command at a time (`skyhost ctl`, `skyhost tenant`, `skyhost console`).
pub struct ControlClient {
    write: Writer,
    lines: tokio::io::Lines<BufReader<Reader>>,
}

impl ControlClient {
    /// Connects and authenticates with `secret`.
    ///
    /// # Errors
    /// When the node cannot be reached, or refuses the secret (the error
    /// says so).
    pub async fn connect(address: &str, secret: &str) -> std::io::Result<Self> {
        Self::connect_secured(address, secret, None).await
    }

    /// [`ControlClient::connect`], under TLS when `tls` is given: the
    /// operator's certificate (from [`Tls::load_operator`]) and, when
    /// known, the name the node's certificate must hold.
    ///
    /// # Errors
    /// As [`ControlClient::connect`], and a failed TLS handshake (the
    /// node's certificate is from another CA, or this one's is refused).
    pub async fn connect_secured(
        address: &str,
        secret: &str,
        tls: Option<(&Tls, Option<&str>)>,
    ) -> std::io::Result<Self> {
        let stream = TcpStream::connect(address).await?;
        let stream = match tls {
            Some((tls, name)) => tls
                .connect(stream, name.unwrap_or("control"))
                .await
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::ConnectionRefused, e))?,
            None => Stream::Plain(stream),
        };
        let (read, write) = tokio::io::split(stream);
        let mut client = ControlClient {
            write: Box::new(write),
            lines: BufReader::new(Box::new(read) as Reader).lines(),
        };
        let answer = client.run(&format!("auth {secret}")).await.map_err(|e| {
            if tls.is_none() {
                return e;
            }
            // TLS 1.3 tells a client its certificate was refused only at
            // its first read.
            std::io::Error::new(
                e.kind(),
                format!("the node refused this certificate (is it signed by the node's CA?): {e}"),
            )
        })?;
        if let Answer::Error(e) = answer {
            return Err(std::io::Error::new(std::io::ErrorKind::PermissionDenied, e));
        }
        Ok(client)
    }

    /// Runs one command, handing each line of its answer to `each` as it
    /// arrives (what `watch` needs); `each` returns false to stop reading
    /// (drop the client then: closing the connection ends a `watch`).
    ///
    /// # Errors
    /// When the connection fails or the node closes it before answering.
    pub async fn stream(
        &mut self,
        command: &str,
        mut each: impl FnMut(&str) -> bool,
    ) -> std::io::Result<Answer> {
        let command = command.replace(['\n', '\r'], " ");
        self.write
            .write_all(format!("{command}\n").as_bytes())
            .await?;
        loop {
            let Some(line) = self.lines.next_line().await? else {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the node closed the control connection",
                ));
            };
            if let Some(answer) = Answer::decode_text(std::slice::from_ref(&line)) {
                return Ok(answer);
            }
            if !each(line.strip_prefix(' ').unwrap_or(&line)) {
                return Ok(Answer::Ok(Vec::new()));
            }
        }
    }

    /// Runs one command and reads its answer.
    ///
    /// # Errors
    /// When the connection fails or the node closes it before answering.
    pub async fn run(&mut self, command: &str) -> std::io::Result<Answer> {
        let command = command.replace(['\n', '\r'], " ");
        self.write
            .write_all(format!("{command}\n").as_bytes())
            .await?;
        let mut got = Vec::new();
        loop {
            let Some(line) = self.lines.next_line().await? else {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the node closed the control connection",
                ));
            };
            got.push(line);
            if let Some(a) = Answer::decode_text(&got) {
                return Ok(a);
            }
        }
    }
}

/// Connects to a control address, authenticates, runs `command` and
/// returns its answer; a refused secret is an [`Answer::Error`].
///
/// # Errors
/// When the node cannot be reached or closes the connection early.
pub async fn request(address: &str, secret: &str, command: &str) -> std::io::Result<Answer> {
    match ControlClient::connect(address, secret).await {
        Ok(mut c) => c.run(command).await,
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            Ok(Answer::Error(e.to_string()))
        }
        Err(e) => Err(e),
    }
}

//! Versioned challenge-response handshake proving a shared secret both
//! ways, without ever sending it.
//!
//! ```text
//!  client                                              server
//!    │ Hello{version, protocol, name_c, nonce_c}  ──>    │  version == ours? protocol == ours?
//!    │                                                   │  (else Refused and fail)
//!    │    <──  Challenge{version, name_s, nonce_s}       │
//!    │ Proof{mac_c}                               ──>    │  verify mac_c (constant time)
//!    │                                                   │  (else Refused "wrong secret" and fail)
//!    │    <──  Welcome{mac_s}                            │  up
//!    │ verify mac_s, up                                  │
//! ```
//!
//! `mac_c = HMAC-SHA256(secret, "skyhost client proof" ‖ transcript)` and
//! `mac_s` the same with `"skyhost server proof"`, where the transcript is
//! `protocol ‖ nonce_c ‖ nonce_s ‖ name_c ‖ name_s` with each variable-length
//! field prefixed by its length (u64 little-endian), so that bytes cannot be
//! shifted from one field to the next. The labels keep a server from
//! replaying the client's proof back to it. Nonces come from the caller (the
//! driver draws them at random), so the core stays deterministic.
//!
//! [`Handshake`] is a pure state machine: it takes the peer's frames and
//! says what to answer; [`super::link::Link`] puts it on the wire.

use std::sync::Arc;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::frame::{Envelope, Frame, PROTOCOL_VERSION};
use super::link::{PeerInfo, Role};

type HmacSha256 = Hmac<Sha256>;

/// Domain-separation label of the client's proof.
const CLIENT_LABEL: &[u8] = b"skyhost client proof";
/// Domain-separation label of the server's proof.
const SERVER_LABEL: &[u8] = b"skyhost server proof";

/// Why a handshake failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// The peer speaks another wire protocol version.
    #[error("peer {peer} speaks protocol version {version}, expected {expected}")]
    Version {
        /// Name the peer claimed.
        peer: String,
        /// The peer's version.
        version: u16,
        /// Ours.
        expected: u16,
    },
    /// The peer wants another layer protocol (e.g. cluster instead of harbor).
    #[error("peer {peer} speaks protocol {protocol:?}, expected {expected:?}")]
    Protocol {
        /// Name the peer claimed.
        peer: String,
        /// The peer's protocol.
        protocol: String,
        /// Ours.
        expected: String,
    },
    /// The client's proof is wrong: it does not know the secret (we refused it).
    #[error("peer {peer} failed the handshake: wrong secret")]
    WrongSecret {
        /// Name the peer claimed.
        peer: String,
    },
    /// The server's proof in `Welcome` is wrong.
    #[error("peer {peer} failed to prove the shared secret")]
    PeerFailedProof {
        /// Name the peer claimed.
        peer: String,
    },
    /// The peer refused us.
    #[error("peer refused the link: {reason}")]
    Refused {
        /// The reason the peer gave.
        reason: String,
    },
    /// A frame that has no place at this point of the handshake.
    #[error("unexpected {frame} frame while {state}")]
    Unexpected {
        /// Where the handshake was.
        state: &'static str,
        /// The frame's variant.
        frame: &'static str,
    },
}

impl HandshakeError {
    /// The reason to send to the peer in a `Refused` frame before closing,
    /// or `None` when nothing should be said (the peer refused us).
    pub fn refusal(&self) -> Option<String> {
        match self {
            HandshakeError::Version {
                version, expected, ..
            } => Some(format!("protocol version {version}, expected {expected}")),
            HandshakeError::Protocol {
                protocol, expected, ..
            } => Some(format!("protocol {protocol:?}, expected {expected:?}")),
            HandshakeError::WrongSecret { .. } => Some("wrong secret".to_owned()),
            HandshakeError::PeerFailedProof { .. } => {
                Some("server failed to prove the shared secret".to_owned())
            }
            HandshakeError::Refused { .. } => None,
            HandshakeError::Unexpected { .. } => Some(self.to_string()),
        }
    }
}

/// What to do after the handshake took a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step<C, H = Envelope> {
    /// Frame to send to the peer, if any.
    pub reply: Option<Frame<C, H>>,
    /// Set when the handshake is complete: who the peer is.
    pub done: Option<PeerInfo>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Client before `start`.
    ClientStart,
    /// Client, `Hello` sent.
    AwaitChallenge,
    /// Client, `Proof` sent.
    AwaitWelcome,
    /// Server, nothing received yet.
    AwaitHello,
    /// Server, `Challenge` sent.
    AwaitProof,
    /// Both proofs checked.
    Done,
    /// An error ended the handshake.
    Failed,
}

impl State {
    fn name(self) -> &'static str {
        match self {
            State::ClientStart => "starting",
            State::AwaitChallenge => "awaiting Challenge",
            State::AwaitWelcome => "awaiting Welcome",
            State::AwaitHello => "awaiting Hello",
            State::AwaitProof => "awaiting Proof",
            State::Done => "up",
            State::Failed => "failed",
        }
    }
}

/// The peer's side of the transcript, once known.
#[derive(Debug, Clone)]
struct Peer {
    name: String,
    version: u16,
    nonce: [u8; 32],
}

/// One end of the handshake.
pub struct Handshake {
    role: Role,
    state: State,
    protocol: String,
    name: String,
    secret: Arc<[u8]>,
    nonce: [u8; 32],
    peer: Option<Peer>,
}

impl std::fmt::Debug for Handshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handshake")
            .field("role", &self.role)
            .field("state", &self.state)
            .field("protocol", &self.protocol)
            .field("name", &self.name)
            .field("peer", &self.peer.as_ref().map(|p| &p.name))
            .finish_non_exhaustive()
    }
}

impl Handshake {
    /// A handshake for this end: our `protocol`, node `name`, the shared
    /// `secret` and a fresh random `nonce`.
    pub fn new(
        role: Role,
        protocol: String,
        name: String,
        secret: Arc<[u8]>,
        nonce: [u8; 32],
    ) -> Self {
        let state = match role {
            Role::Client => State::ClientStart,
            Role::Server => State::AwaitHello,
        };
        Handshake {
            role,
            state,
            protocol,
            name,
            secret,
            nonce,
            peer: None,
        }
    }

    /// The first frame to send: `Hello` for a client (once), `None` for a server.
    pub fn start<C, H>(&mut self) -> Option<Frame<C, H>> {
        if self.state != State::ClientStart {
            return None;
        }
        self.state = State::AwaitChallenge;
        Some(Frame::Hello {
            version: PROTOCOL_VERSION,
            protocol: self.protocol.clone(),
            name: self.name.clone(),
            nonce: self.nonce,
        })
    }

    /// Where the handshake is, for errors and logs (`"awaiting Proof"`, `"up"`).
    pub fn state(&self) -> &'static str {
        self.state.name()
    }

    /// Whether both proofs were checked.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Takes the peer's next frame.
    ///
    /// # Errors
    /// Any error ends the handshake; [`HandshakeError::refusal`] says what
    /// to tell the peer. A `Refused` frame gives [`HandshakeError::Refused`];
    /// a frame other than the expected one gives
    /// [`HandshakeError::Unexpected`].
    pub fn handle<C, H>(&mut self, frame: Frame<C, H>) -> Result<Step<C, H>, HandshakeError> {
        let result = self.advance(frame);
        if result.is_err() {
            self.state = State::Failed;
        }
        result
    }

    fn advance<C, H>(&mut self, frame: Frame<C, H>) -> Result<Step<C, H>, HandshakeError> {
        match (self.state, frame) {
            (_, Frame::Refused { reason }) => Err(HandshakeError::Refused { reason }),
            (
                State::AwaitHello,
                Frame::Hello {
                    version,
                    protocol,
                    name,
                    nonce,
                },
            ) => {
                check_version(&name, version)?;
                if protocol != self.protocol {
                    return Err(HandshakeError::Protocol {
                        peer: name,
                        protocol,
                        expected: self.protocol.clone(),
                    });
                }
                self.peer = Some(Peer {
                    name,
                    version,
                    nonce,
                });
                self.state = State::AwaitProof;
                let reply = Frame::Challenge {
                    version: PROTOCOL_VERSION,
                    name: self.name.clone(),
                    nonce: self.nonce,
                };
                Ok(Step {
                    reply: Some(reply),
                    done: None,
                })
            }
            (
                State::AwaitChallenge,
                Frame::Challenge {
                    version,
                    name,
                    nonce,
                },
            ) => {
                check_version(&name, version)?;
                let mac = transcript(
                    &self.secret,
                    CLIENT_LABEL,
                    &self.protocol,
                    &self.nonce,
                    &nonce,
                    &self.name,
                    &name,
                )
                .finalize()
                .into_bytes()
                .into();
                self.peer = Some(Peer {
                    name,
                    version,
                    nonce,
                });
                self.state = State::AwaitWelcome;
                Ok(Step {
                    reply: Some(Frame::Proof { mac }),
                    done: None,
                })
            }
            (State::AwaitProof, Frame::Proof { mac }) => {
                let peer = self.peer_or_unexpected("Proof")?;
                let expected = transcript(
                    &self.secret,
                    CLIENT_LABEL,
                    &self.protocol,
                    &peer.nonce,
                    &self.nonce,
                    &peer.name,
                    &self.name,
                );
                if expected.verify_slice(&mac).is_err() {
                    return Err(HandshakeError::WrongSecret {
                        peer: peer.name.clone(),
                    });
                }
                let welcome = transcript(
                    &self.secret,
                    SERVER_LABEL,
                    &self.protocol,
                    &peer.nonce,
                    &self.nonce,
                    &peer.name,
                    &self.name,
                )
                .finalize()
                .into_bytes()
                .into();
                let done = PeerInfo {
                    name: peer.name.clone(),
                    version: peer.version,
                };
                self.state = State::Done;
                Ok(Step {
                    reply: Some(Frame::Welcome { mac: welcome }),
                    done: Some(done),
                })
            }
            (State::AwaitWelcome, Frame::Welcome { mac }) => {
                let peer = self.peer_or_unexpected("Welcome")?;
                let expected = transcript(
                    &self.secret,
                    SERVER_LABEL,
                    &self.protocol,
                    &self.nonce,
                    &peer.nonce,
                    &self.name,
                    &peer.name,
                );
                if expected.verify_slice(&mac).is_err() {
                    return Err(HandshakeError::PeerFailedProof {
                        peer: peer.name.clone(),
                    });
                }
                let done = PeerInfo {
                    name: peer.name.clone(),
                    version: peer.version,
                };
                self.state = State::Done;
                Ok(Step {
                    reply: None,
                    done: Some(done),
                })
            }
            (state, frame) => Err(HandshakeError::Unexpected {
                state: state.name(),
                frame: frame.kind(),
            }),
        }
    }

    fn peer_or_unexpected(&self, frame: &'static str) -> Result<&Peer, HandshakeError> {
        self.peer.as_ref().ok_or(HandshakeError::Unexpected {
            state: self.state.name(),
            frame,
        })
    }
}

fn check_version(peer: &str, version: u16) -> Result<(), HandshakeError> {
    if version == PROTOCOL_VERSION {
        Ok(())
    } else {
        Err(HandshakeError::Version {
            peer: peer.to_owned(),
            version,
            expected: PROTOCOL_VERSION,
        })
    }
}

/// HMAC over `label ‖ protocol ‖ nonce_c ‖ nonce_s ‖ client ‖ server`, the
/// variable-length fields length-prefixed.
fn transcript(
    secret: &[u8],
    label: &[u8],
    protocol: &str,
    nonce_c: &[u8; 32],
    nonce_s: &[u8; 32],
    client: &str,
    server: &str,
) -> HmacSha256 {
    let Ok(mut mac) = <HmacSha256 as Mac>::new_from_slice(secret) else {
        unreachable!("HMAC accepts keys of any length");
    };
    mac.update(label);
    update_field(&mut mac, protocol.as_bytes());
    mac.update(nonce_c);
    mac.update(nonce_s);
    update_field(&mut mac, client.as_bytes());
    update_field(&mut mac, server.as_bytes());
    mac
}

fn update_field(mac: &mut HmacSha256, field: &[u8]) {
    mac.update(&(field.len() as u64).to_le_bytes());
    mac.update(field);
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    type F = Frame<()>;

    fn pair(client_secret: &[u8], server_secret: &[u8]) -> (Handshake, Handshake) {
        let client = Handshake::new(
            Role::Client,
            "skyhost-harbor".into(),
            "alpha".into(),
            client_secret.into(),
            [1; 32],
        );
        let server = Handshake::new(
            Role::Server,
            "skyhost-harbor".into(),
            "beta".into(),
            server_secret.into(),
            [2; 32],
        );
        (client, server)
    }

    #[test]
    fn right_secret_completes_both_ways() {
        let (mut c, mut s) = pair(b"sesame", b"sesame");
        let hello: F = c.start().unwrap();
        assert!(c.start::<(), Envelope>().is_none(), "Hello only once");
        let challenge = s.handle(hello).unwrap().reply.unwrap();
        let proof = c.handle(challenge).unwrap().reply.unwrap();
        let Step { reply, done } = s.handle(proof).unwrap();
        assert_eq!(
            done,
            Some(PeerInfo {
                name: "alpha".into(),
                version: PROTOCOL_VERSION
            })
        );
        let Step { reply, done } = c.handle(reply.unwrap()).unwrap();
        assert_eq!(reply, None);
        assert_eq!(
            done,
            Some(PeerInfo {
                name: "beta".into(),
                version: PROTOCOL_VERSION
            })
        );
        assert!(c.is_done() && s.is_done());
    }

    #[test]
    fn wrong_secret_is_refused_without_leaking() {
        let (mut c, mut s) = pair(b"sesame", b"open");
        let challenge = s
            .handle::<(), Envelope>(c.start().unwrap())
            .unwrap()
            .reply
            .unwrap();
        let proof = c.handle(challenge).unwrap().reply.unwrap();
        let err = s.handle(proof).unwrap_err();
        assert_eq!(
            err,
            HandshakeError::WrongSecret {
                peer: "alpha".into()
            }
        );
        assert_eq!(
            err.to_string(),
            "peer alpha failed the handshake: wrong secret"
        );
        assert_eq!(err.refusal().as_deref(), Some("wrong secret"));
        assert_eq!(s.state(), "failed");
    }

    #[test]
    fn tampered_welcome_fails_the_server() {
        let (mut c, mut s) = pair(b"sesame", b"sesame");
        let challenge = s
            .handle::<(), Envelope>(c.start().unwrap())
            .unwrap()
            .reply
            .unwrap();
        let proof = c.handle(challenge).unwrap().reply.unwrap();
        let Some(Frame::Welcome { mut mac }) = s.handle(proof).unwrap().reply else {
            panic!("no Welcome")
        };
        mac[31] ^= 1;
        let err = c.handle(Frame::<()>::Welcome { mac }).unwrap_err();
        assert_eq!(
            err,
            HandshakeError::PeerFailedProof {
                peer: "beta".into()
            }
        );
        assert_eq!(
            err.to_string(),
            "peer beta failed to prove the shared secret"
        );
    }

    #[test]
    fn replayed_client_proof_is_not_a_welcome() {
        let (mut c, mut s) = pair(b"sesame", b"sesame");
        let challenge = s
            .handle::<(), Envelope>(c.start().unwrap())
            .unwrap()
            .reply
            .unwrap();
        let Some(Frame::Proof { mac }) = c.handle(challenge).unwrap().reply else {
            panic!("no Proof")
        };
        let err = c.handle(Frame::<()>::Welcome { mac }).unwrap_err();
        assert!(
            matches!(err, HandshakeError::PeerFailedProof { .. }),
            "{err}"
        );
    }

    #[test]
    fn version_and_protocol_mismatch_name_both_values() {
        let (_, mut s) = pair(b"k", b"k");
        let hello = F::Hello {
            version: 99,
            protocol: "skyhost-harbor".into(),
            name: "alpha".into(),
            nonce: [0; 32],
        };
        let err = s.handle(hello).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("peer alpha speaks protocol version 99, expected {PROTOCOL_VERSION}")
        );
        assert_eq!(
            err.refusal().as_deref(),
            Some(format!("protocol version 99, expected {PROTOCOL_VERSION}").as_str())
        );

        let (_, mut s) = pair(b"k", b"k");
        let hello = F::Hello {
            version: PROTOCOL_VERSION,
            protocol: "skyhost-cluster".into(),
            name: "alpha".into(),
            nonce: [0; 32],
        };
        let err = s.handle(hello).unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"peer alpha speaks protocol "skyhost-cluster", expected "skyhost-harbor""#
        );
        assert_eq!(
            err.refusal().as_deref(),
            Some(r#"protocol "skyhost-cluster", expected "skyhost-harbor""#)
        );
    }

    #[test]
    fn unexpected_and_refused_frames() {
        let (mut c, mut s) = pair(b"k", b"k");
        let err = s.handle(F::Ping(1)).unwrap_err();
        assert_eq!(
            err,
            HandshakeError::Unexpected {
                state: "awaiting Hello",
                frame: "Ping"
            }
        );
        let _: F = c.start().unwrap();
        let err = c
            .handle(F::Refused {
                reason: "busy".into(),
            })
            .unwrap_err();
        assert_eq!(
            err,
            HandshakeError::Refused {
                reason: "busy".into()
            }
        );
        assert_eq!(err.refusal(), None);
    }

    /// Moving bytes between the length-prefixed fields changes the MAC.
    #[test]
    fn fields_cannot_be_shifted() {
        let n = [0u8; 32];
        let a = transcript(b"k", CLIENT_LABEL, "p", &n, &n, "ab", "c")
            .finalize()
            .into_bytes();
        let b = transcript(b"k", CLIENT_LABEL, "p", &n, &n, "a", "bc")
            .finalize()
            .into_bytes();
        assert_ne!(a, b);
    }
}

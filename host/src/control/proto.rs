//! The control protocol, sans-io: one command per line in, an answer out.
//!
//! ```text
//! > auth <secret>              first line of every connection
//! < ok
//! > tenant apply /abs/tenant.toml
//! < started :00000a00
//! < ok
//! > tenant remove blue
//! < error: no tenant `blue` on this node
//! ```
//!
//! A text answer is its lines, then `ok` or `error: <why>` (so `nc` can
//! drive it). After `json`, each answer is one JSON object per line:
//! `{"ok": true, "lines": [...]}` or `{"ok": false, "error": "..."}`.

use serde::Serialize;

use crate::runtime::Address;

/// The longest command line accepted, in bytes.
pub const MAX_LINE: usize = 64 * 1024;

/// One command of the control protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `auth <secret>`: must come first.
    Auth(String),
    /// `help`: the commands.
    Help,
    /// `json`: answer in JSON from now on.
    Json,
    /// `quit`: close the connection.
    Quit,
    /// `tenants`: each tenant's accounting.
    Tenants,
    /// `tenant apply <path>`: apply the tenant file at `path` (on the node's machine).
    TenantApply(String),
    /// `tenant remove <name>`: remove a tenant.
    TenantRemove(String),
    /// `list`: every service: address, module, tenant, names, mailbox, state.
    List,
    /// `stat <addr>`: one service's counters.
    Stat(Address),
    /// `mem`: memory per service (largest first) and in all.
    Mem,
    /// `kill <addr>`: stop a service.
    Kill(Address),
    /// `spawn [tenant/]<module> [args...]`: start a service.
    Spawn {
        /// The tenant (`system` when not given).
        tenant: String,
        /// The module.
        module: String,
        /// Its `init` arguments (the rest of the line).
        args: String,
    },
    /// `ping <addr>`: how long the service takes to pick up a message.
    Ping(Address),
    /// `call [tenant/]<addr|name> [payload]`: call a service with the rest
    /// of the line as its payload, as a service of that tenant would, and
    /// print its answer.
    Call(Poke),
    /// `send [tenant/]<addr|name> [payload]`: send it the rest of the line
    /// as a text message.
    Send(Poke),
    /// `watch [tenant/]<addr|name>`: each message the service takes and
    /// sends, a line each as it passes, until the client sends a line or
    /// the service ends.
    Watch(Poke),
    /// `netstat`: harbor and cluster links.
    Netstat,
    /// `trace <addr> on|off`: log each message in and out of a service.
    Trace(Address, bool),
    /// `upgrade <addr|[tenant/]name|[tenant/]module> <path.wasm> [wait_ms]`:
    /// replace the module of a service, or of every instance of a module.
    Upgrade {
        /// What to upgrade (see `Node::upgrade`).
        target: String,
        /// The new component, on the node's machine.
        path: String,
        /// How long each service may take to finish its own sessions.
        wait_ms: u64,
    },
}

/// What `call` and `send` reach, and with what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Poke {
    /// The tenant the message is sent from (`system` when not given): a
    /// name is looked up in its namespace, and its sealing applies.
    pub tenant: String,
    /// The service.
    pub target: Target,
    /// The payload: the rest of the line as text, or the bytes of
    /// `hex:<hex>` (what `skyhost ctl call <target> @file` sends).
    pub payload: Vec<u8>,
}

/// A service, by address or by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `:0000010a` or decimal.
    Address(Address),
    /// A name registered in the tenant (`.hello`, or `other/entry` for an
    /// entry another tenant grants).
    Name(String),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Address(a) => write!(f, "{a}"),
            Target::Name(n) => write!(f, "{n}"),
        }
    }
}

/// How long `upgrade` lets a service finish its own sessions by default.
pub const UPGRADE_WAIT_MS: u64 = 5_000;

/// Why a line is not a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Nothing on the line.
    #[error("empty command (try `help`)")]
    Empty,
    /// No such command.
    #[error("unknown command `{0}` (try `help`)")]
    Unknown(String),
    /// The command needs an argument it did not get, or got too many.
    #[error("usage: {0}")]
    Usage(&'static str),
    /// `spawn` was given a path (or a file name) where a module name goes.
    #[error(
        "`{0}` is not a module name: spawn takes `[tenant/]module`, the name of a module in \
         the tenant's module paths (letters, digits, `-` and `_`; `echo` for echo.wasm), not a path"
    )]
    NotAModule(String),
}

/// The commands and what they do, as `help` prints them.
pub const HELP: &[&str] = &[
    "auth <secret>            authenticate (first line)",
    "list                     every service: address, module, tenant, names, mailbox, state",
    "stat <addr>              one service: messages, CPU, mailbox and peak, memory, age",
    "mem                      linear memory per service, largest first, and in all",
    "kill <addr>              stop a service (its pending sessions end with an error)",
    "spawn [tenant/]<module> [args]  start a service",
    "ping <addr>              how long a service takes to pick up a message",
    "call [tenant/]<addr|name> [payload|hex:<hex>]  call a service with the rest of the line; print its answer",
    "send [tenant/]<addr|name> [payload]  send a service the rest of the line as a text message",
    "watch [tenant/]<addr|name>  each message in and out as it passes, until you send a line",
    "netstat                  harbor and cluster links: peer, state, bytes, frames, queued, RTT",
    "trace <addr> on|off      log each message in and out (source, kind, session, size, time)",
    "upgrade <addr|name|module> <path.wasm> [wait_ms]  replace a service's module, keeping its state",
    "tenants                  each tenant: services, memory, CPU, messages, refusals",
    "tenant apply <path>      apply a tenant file and start its bootstrap services",
    "tenant remove <name>     stop a tenant's services and remove it",
    "json                     answer in JSON from now on",
    "help                     this list",
    "quit                     close the connection",
];

impl Request {
    /// Parses one line (without its line ending).
    ///
    /// # Errors
    /// [`ParseError`] naming what is wrong.
    pub fn parse(line: &str) -> Result<Request, ParseError> {
        let line = line.trim();
        let (word, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        let rest = rest.trim();
        let none = |r: Request, usage| {
            if rest.is_empty() {
                Ok(r)
            } else {
                Err(ParseError::Usage(usage))
            }
        };
        match word {
            "" => Err(ParseError::Empty),
            // The secret is the rest of the line: it may hold spaces. A
            // bare `auth` is an operator whose TLS certificate is all it
            // shows (a node with a secret refuses it).
            "auth" => Ok(Request::Auth(rest.to_string())),
            "help" => none(Request::Help, "help"),
            "json" => none(Request::Json, "json"),
            "quit" | "exit" => none(Request::Quit, "quit"),
            "tenants" => none(Request::Tenants, "tenants"),
            "list" => none(Request::List, "list"),
            "mem" => none(Request::Mem, "mem"),
            "netstat" => none(Request::Netstat, "netstat"),
            "trace" => {
                let usage = "trace <addr> on|off";
                let (addr, switch) = rest
                    .split_once(char::is_whitespace)
                    .ok_or(ParseError::Usage(usage))?;
                let on = match switch.trim() {
                    "on" => true,
                    "off" => false,
                    _ => return Err(ParseError::Usage(usage)),
                };
                Ok(Request::Trace(address(addr, usage)?, on))
            }
            "upgrade" => {
                let usage = "upgrade <addr|[tenant/]name|[tenant/]module> <path.wasm> [wait_ms]";
                let (target, rest) = rest
                    .split_once(char::is_whitespace)
                    .ok_or(ParseError::Usage(usage))?;
                let rest = rest.trim();
                let (path, wait_ms) = match rest.rsplit_once(char::is_whitespace) {
                    Some((path, ms)) if ms.bytes().all(|b| b.is_ascii_digit()) => (
                        path.trim(),
                        ms.parse().map_err(|_| ParseError::Usage(usage))?,
                    ),
                    _ => (rest, UPGRADE_WAIT_MS),
                };
                Ok(Request::Upgrade {
                    target: target.to_string(),
                    path: path.to_string(),
                    wait_ms,
                })
            }
            "stat" => address(rest, "stat <addr>").map(Request::Stat),
            "kill" => address(rest, "kill <addr>").map(Request::Kill),
            "ping" => address(rest, "ping <addr>").map(Request::Ping),
            "call" => poke(rest, "call [tenant/]<addr|name> [payload]").map(Request::Call),
            "send" => poke(rest, "send [tenant/]<addr|name> [payload]").map(Request::Send),
            "watch" => {
                let usage = "watch [tenant/]<addr|name>";
                let watched = poke(rest, usage)?;
                if !watched.payload.is_empty() {
                    return Err(ParseError::Usage(usage));
                }
                Ok(Request::Watch(watched))
            }
            "spawn" => {
                let (target, args) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
                let (tenant, module) = target.split_once('/').unwrap_or(("system", target));
                let module_name = |m: &str| {
                    m.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                };
                if target.starts_with('/') || !module_name(module) || tenant.starts_with('.') {
                    return Err(ParseError::NotAModule(target.to_string()));
                }
                if module.is_empty() || tenant.is_empty() {
                    return Err(ParseError::Usage("spawn [tenant/]<module> [args]"));
                }
                Ok(Request::Spawn {
                    tenant: tenant.to_string(),
                    module: module.to_string(),
                    args: args.trim().to_string(),
                })
            }
            "tenant" => {
                let (sub, arg) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
                let arg = arg.trim();
                let usage = "tenant apply <path> | tenant remove <name>";
                if arg.is_empty() {
                    return Err(ParseError::Usage(usage));
                }
                match sub {
                    "apply" => Ok(Request::TenantApply(arg.to_string())),
                    "remove" if !arg.contains(char::is_whitespace) => {
                        Ok(Request::TenantRemove(arg.to_string()))
                    }
                    _ => Err(ParseError::Usage(usage)),
                }
            }
            other => Err(ParseError::Unknown(other.to_string())),
        }
    }
}

/// `[tenant/]<addr|name> [payload]`: what comes before the first `/` is
/// the tenant (`blue/other/entry`: the entry `other` grants `blue`).
fn poke(rest: &str, usage: &'static str) -> Result<Poke, ParseError> {
    let (target, payload) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
    if target.is_empty() {
        return Err(ParseError::Usage(usage));
    }
    let (tenant, service) = match target.split_once('/') {
        Some((tenant, service)) if !tenant.is_empty() && !service.is_empty() => (tenant, service),
        Some(_) => return Err(ParseError::Usage(usage)),
        None => (crate::runtime::SYSTEM_TENANT, target),
    };
    let target = match service.parse::<Address>() {
        Ok(a) => Target::Address(a),
        Err(_) => Target::Name(service.to_string()),
    };
    let payload = payload.trim_start();
    let payload = match payload.strip_prefix("hex:") {
        Some(digits) => hex::decode(digits).map_err(|_| ParseError::Usage(usage))?,
        None => payload.as_bytes().to_vec(),
    };
    Ok(Poke {
        tenant: tenant.to_string(),
        target,
        payload,
    })
}

/// One line of `watch`: direction, peer, kind, session, size and the
/// payload's head (quoted text, else hex), e.g.
/// `in  :00000100 request session=3 size=5 "world"`.
pub fn watch_line(t: &crate::runtime::tap::Tapped) -> String {
    use crate::runtime::tap::Direction;
    use crate::runtime::tenant::{KIND_LABELS, kind_slot};
    let direction = match t.direction {
        Direction::In => "in ",
        Direction::Out => "out",
    };
    let kind = match KIND_LABELS[kind_slot(t.kind)] {
        "user" | "other" => format!("kind={}", t.kind),
        label => label.to_string(),
    };
    let more = if t.size > t.head.len() { "..." } else { "" };
    let head = match std::str::from_utf8(&t.head) {
        Ok(text) => format!("{text:?}{more}"),
        // Cut inside a character: the whole characters before the cut.
        Err(e) if more == "..." && e.error_len().is_none() => {
            format!(
                "{:?}...",
                String::from_utf8_lossy(&t.head[..e.valid_up_to()])
            )
        }
        Err(_) => format!("hex:{}{more}", hex::encode(&t.head)),
    };
    let lost = if t.lost > 0 {
        format!("({} lost) ", t.lost)
    } else {
        String::new()
    };
    format!(
        "{lost}{direction} {} {kind} session={} size={} {head}",
        t.peer, t.session, t.size
    )
}

/// The one argument of `usage` as an address (`:0000010a` or decimal).
fn address(rest: &str, usage: &'static str) -> Result<Address, ParseError> {
    if rest.is_empty() || rest.contains(char::is_whitespace) {
        return Err(ParseError::Usage(usage));
    }
    rest.parse().map_err(|_| ParseError::Usage(usage))
}

/// An answer to one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// It worked; what it printed.
    Ok(Vec<String>),
    /// It failed, and why.
    Error(String),
}

#[derive(Serialize)]
struct JsonAnswer<'a> {
    ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    lines: Option<&'a [String]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
}

impl Answer {
    /// The bytes sent for this answer: text lines ending in `ok` or
    /// `error: ...`, or one JSON line.
    pub fn encode(&self, json: bool) -> String {
        if json {
            let a = match self {
                Answer::Ok(lines) => JsonAnswer {
                    ok: true,
                    lines: Some(lines),
                    error: None,
                },
                Answer::Error(e) => JsonAnswer {
                    ok: false,
                    lines: None,
                    error: Some(e),
                },
            };
            let mut s = serde_json::to_string(&a).unwrap_or_else(|_| "{\"ok\":false}".into());
            s.push('\n');
            return s;
        }
        let mut s = String::new();
        match self {
            Answer::Ok(lines) => {
                for l in lines {
                    // A line that reads like an end marker (or starts with
                    // the indent itself) is indented by one space.
                    if l == "ok" || l.starts_with("error:") || l.starts_with(' ') {
                        s.push(' ');
                    }
                    s.push_str(l);
                    s.push('\n');
                }
                s.push_str("ok\n");
            }
            Answer::Error(e) => {
                s.push_str("error: ");
                s.push_str(&e.replace('\n', " "));
                s.push('\n');
            }
        }
        s
    }

    /// Reads a text answer back from its lines (for the `ctl` client):
    /// `None` until the closing `ok` or `error:` line has been seen.
    pub fn decode_text(lines: &[String]) -> Option<Answer> {
        let last = lines.last()?;
        let body = || {
            lines[..lines.len() - 1]
                .iter()
                .map(|l| l.strip_prefix(' ').unwrap_or(l).to_string())
                .collect()
        };
        if last == "ok" {
            Some(Answer::Ok(body()))
        } else {
            last.strip_prefix("error: ")
                .map(|e| Answer::Error(e.to_string()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_watch_line_shows_text_hex_and_what_was_cut() {
        use crate::runtime::tap::{Direction, Tapped};
        let tapped = |direction, kind, payload: &[u8], size, lost| Tapped {
            direction,
            peer: Address(0x100),
            kind,
            session: 3,
            size,
            head: payload.to_vec(),
            lost,
        };
        assert_eq!(
            watch_line(&tapped(Direction::In, 10, b"world", 5, 0)),
            "in  :00000100 request session=3 size=5 \"world\""
        );
        assert_eq!(
            watch_line(&tapped(Direction::Out, 1, &[0, 0xff], 2, 2)),
            "(2 lost) out :00000100 response session=3 size=2 hex:00ff"
        );
        // Cut in the middle of a two-byte character.
        assert_eq!(
            watch_line(&tapped(Direction::In, 16, &[b'a', 0xc3], 100, 0)),
            "in  :00000100 kind=16 session=3 size=100 \"a\"..."
        );
    }

    #[test]
    fn call_and_send_take_a_tenant_a_target_and_the_rest_as_payload() {
        let poke = |tenant: &str, target: Target, payload: &str| Poke {
            tenant: tenant.into(),
            target,
            payload: payload.as_bytes().to_vec(),
        };
        assert_eq!(
            Request::parse("call .hello  hello world "),
            Ok(Request::Call(poke(
                "system",
                Target::Name(".hello".into()),
                "hello world"
            )))
        );
        assert_eq!(
            Request::parse("send blue/:0000010a x"),
            Ok(Request::Send(poke(
                "blue",
                Target::Address(Address(0x10a)),
                "x"
            )))
        );
        assert_eq!(
            Request::parse("call blue/other/entry"),
            Ok(Request::Call(poke(
                "blue",
                Target::Name("other/entry".into()),
                ""
            )))
        );
        assert_eq!(
            Request::parse("call .x hex:00ff0a"),
            Ok(Request::Call(Poke {
                tenant: "system".into(),
                target: Target::Name(".x".into()),
                payload: vec![0, 0xff, b'\n'],
            }))
        );
        assert_eq!(
            Request::parse("watch blue/.x"),
            Ok(Request::Watch(poke("blue", Target::Name(".x".into()), "")))
        );
        for bad in [
            "call",
            "call /x y",
            "send blue/ y",
            "call .x hex:0g",
            "watch",
            "watch .x y",
        ] {
            assert!(
                matches!(Request::parse(bad), Err(ParseError::Usage(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn commands_parse_with_their_arguments() {
        assert_eq!(
            Request::parse("auth open sesame"),
            Ok(Request::Auth("open sesame".into()))
        );
        assert_eq!(Request::parse("  tenants "), Ok(Request::Tenants));
        assert_eq!(
            Request::parse("tenant apply /etc/sky/blue tenant.toml"),
            Ok(Request::TenantApply("/etc/sky/blue tenant.toml".into()))
        );
        assert_eq!(
            Request::parse("tenant remove blue"),
            Ok(Request::TenantRemove("blue".into()))
        );
        assert_eq!(
            Request::parse("stat :00000a00"),
            Ok(Request::Stat(Address(0xa00)))
        );
        assert_eq!(
            Request::parse("kill 2560"),
            Ok(Request::Kill(Address(2560)))
        );
        assert!(matches!(
            Request::parse("ping :zz"),
            Err(ParseError::Usage(_))
        ));
        assert_eq!(
            Request::parse("spawn blue/echo a b"),
            Ok(Request::Spawn {
                tenant: "blue".into(),
                module: "echo".into(),
                args: "a b".into()
            })
        );
        for path in [
            "../x",
            "./echo",
            "/tmp/echo.wasm",
            "echo.wasm",
            "blue/../echo",
        ] {
            let e = Request::parse(&format!("spawn {path}")).expect_err(path);
            assert_eq!(e, ParseError::NotAModule(path.into()));
            assert!(e.to_string().contains("not a path"), "{e}");
        }
        assert_eq!(
            Request::parse("spawn echo"),
            Ok(Request::Spawn {
                tenant: "system".into(),
                module: "echo".into(),
                args: String::new()
            })
        );
        assert_eq!(
            Request::parse("trace :00000100 on"),
            Ok(Request::Trace(Address(0x100), true))
        );
        assert!(matches!(
            Request::parse("trace :00000100 maybe"),
            Err(ParseError::Usage(_))
        ));
        assert_eq!(
            Request::parse("upgrade blue/counter /srv/new counter.wasm 250"),
            Ok(Request::Upgrade {
                target: "blue/counter".into(),
                path: "/srv/new counter.wasm".into(),
                wait_ms: 250
            })
        );
        assert_eq!(
            Request::parse("upgrade :00000100 v2.wasm"),
            Ok(Request::Upgrade {
                target: ":00000100".into(),
                path: "v2.wasm".into(),
                wait_ms: UPGRADE_WAIT_MS
            })
        );
        assert!(matches!(
            Request::parse("upgrade counter"),
            Err(ParseError::Usage(_))
        ));
        assert_eq!(Request::parse(""), Err(ParseError::Empty));
        assert!(matches!(
            Request::parse("tenant remove"),
            Err(ParseError::Usage(_))
        ));
        assert!(matches!(
            Request::parse("tenants now"),
            Err(ParseError::Usage(_))
        ));
        assert_eq!(
            Request::parse("reboot"),
            Err(ParseError::Unknown("reboot".into()))
        );
    }

    #[test]
    fn text_answers_end_with_ok_or_error() {
        let ok = Answer::Ok(vec!["a".into(), "ok".into()]);
        assert_eq!(ok.encode(false), "a\n ok\nok\n");
        let err = Answer::Error("bad\nthing".into());
        assert_eq!(err.encode(false), "error: bad thing\n");
        assert_eq!(
            err.encode(true),
            "{\"ok\":false,\"error\":\"bad\\nthing\"}\n"
        );
    }

    proptest! {
        #[test]
        fn any_line_parses_or_fails_cleanly(line in ".{0,200}") {
            let _ = Request::parse(&line);
        }

        #[test]
        fn text_answers_decode_to_what_was_encoded(
            lines in proptest::collection::vec("[^\n\r]{0,40}", 0..8),
            error in "[^\n\r]{1,40}",
        ) {
            for answer in [Answer::Ok(lines.clone()), Answer::Error(error.clone())] {
                let text = answer.encode(false);
                let read: Vec<String> = text.lines().map(str::to_string).collect();
                prop_assert_eq!(Answer::decode_text(&read), Some(answer));
            }
        }
    }
}

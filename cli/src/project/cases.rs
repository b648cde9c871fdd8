//! `skyhost test [DIR]`: a project's test cases, run against its own node.
//! Each `tests/*.toml` file of the project lists calls and what each must
//! answer; `skyhost test` builds the project, starts the node of its
//! `skyhost.toml` in-process (no control address), makes each call in
//! order and reports each case, failing when one fails. The same cases
//! run for a service in any language: they go through the host, as a
//! service's callers do.
//!
//! ```toml
//! [[call]]
//! to = ".hello"          # a name or an address; `tenant/.name` from another tenant
//! payload = "world"      # text (or payload_hex = "00ff")
//! answer = "hello, world" # the answer's text (or answer_hex, or error = "part of the error")
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;
use skyhost::{Address, Node};

/// How long each call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// One test file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    call: Vec<Call>,
}

/// One call and what it must answer.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Call {
    /// `[tenant/]<name|address>`.
    to: String,
    #[serde(default)]
    payload: Option<String>,
    #[serde(default)]
    payload_hex: Option<String>,
    #[serde(default)]
    answer: Option<String>,
    #[serde(default)]
    answer_hex: Option<String>,
    /// A part of the error the call must end with.
    #[serde(default)]
    error: Option<String>,
}

/// A case: where it is written, and the call.
#[derive(Debug, Clone)]
pub struct Case {
    /// `tests/hello.toml#1`.
    pub name: String,
    call: Call,
    payload: Vec<u8>,
    expected: Expected,
}

#[derive(Debug, Clone)]
enum Expected {
    Answer(Vec<u8>),
    Error(String),
}

/// The cases of every `tests/*.toml` of the project in `dir`, in file
/// order, then in each file's order.
///
/// # Errors
/// A file that cannot be read, or a case that is not well formed (named by
/// file, line and key where the TOML says so).
pub fn load(dir: &Path) -> anyhow::Result<Vec<Case>> {
    let files = skyhost_guest_build::files_with_extension(&dir.join("tests"), "toml");
    let mut cases = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("reading {}", file.display()))?;
        cases.extend(parse(&text, &shown(dir, &file))?);
    }
    Ok(cases)
}

/// `file` as the user sees it: relative to the project.
fn shown(dir: &Path, file: &Path) -> String {
    file.strip_prefix(dir)
        .map_or_else(|_| file.to_path_buf(), PathBuf::from)
        .display()
        .to_string()
}

/// The cases of one file's `text`; `file` names it in errors and cases.
///
/// # Errors
/// TOML that does not parse or a case without a target or an expectation.
pub fn parse(text: &str, file: &str) -> anyhow::Result<Vec<Case>> {
    let parsed: File = toml::from_str(text).map_err(|e| {
        let line = e
            .span()
            .map_or(0, |s| skyhost::config::line_of(text, s.start));
        anyhow::anyhow!("{file}:{line}: {}", e.message())
    })?;
    parsed
        .call
        .into_iter()
        .enumerate()
        .map(|(i, call)| {
            let name = format!("{file}#{}", i + 1);
            let payload = match (&call.payload, &call.payload_hex) {
                (Some(_), Some(_)) => bail!("{name}: payload or payload_hex, not both"),
                (Some(text), None) => text.as_bytes().to_vec(),
                (None, Some(h)) => {
                    hex::decode(h).with_context(|| format!("{name}: payload_hex"))?
                }
                (None, None) => Vec::new(),
            };
            let expected = match (&call.answer, &call.answer_hex, &call.error) {
                (Some(text), None, None) => Expected::Answer(text.as_bytes().to_vec()),
                (None, Some(h), None) => {
                    Expected::Answer(hex::decode(h).with_context(|| format!("{name}: answer_hex"))?)
                }
                (None, None, Some(e)) => Expected::Error(e.clone()),
                _ => bail!("{name}: give one of answer, answer_hex or error"),
            };
            Ok(Case {
                name,
                call,
                payload,
                expected,
            })
        })
        .collect()
}

/// Runs `case` on `node`: `Err` says how it failed.
pub async fn run(node: &Node, case: &Case) -> Result<(), String> {
    let (tenant, target) = match case.call.to.split_once('/') {
        Some((t, rest)) if !t.is_empty() && !t.starts_with('.') => (t, rest),
        _ => ("system", case.call.to.as_str()),
    };
    let client = node
        .client_in(tenant)
        .ok_or_else(|| format!("no tenant `{tenant}`"))?;
    let address = match target.parse::<Address>() {
        Ok(a) => a,
        Err(_) => node
            .query_in(tenant, target)
            .ok_or_else(|| format!("no service named `{target}` in tenant `{tenant}`"))?,
    };
    let got = client
        .call_timeout(address, case.payload.clone(), CALL_TIMEOUT)
        .await;
    match (&case.expected, got) {
        (Expected::Answer(want), Ok(answer)) if *want == answer => Ok(()),
        (Expected::Answer(want), Ok(answer)) => Err(format!(
            "answered {}, expected {}",
            shown_bytes(&answer),
            shown_bytes(want)
        )),
        (Expected::Answer(want), Err(e)) => {
            Err(format!("ended with `{e}`, expected {}", shown_bytes(want)))
        }
        (Expected::Error(part), Err(e)) if e.to_string().contains(part.as_str()) => Ok(()),
        (Expected::Error(part), Err(e)) => Err(format!("ended with `{e}`, expected `{part}`")),
        (Expected::Error(part), Ok(answer)) => Err(format!(
            "answered {}, expected an error with `{part}`",
            shown_bytes(&answer)
        )),
    }
}

/// Bytes as quoted text, else hex.
fn shown_bytes(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(text) => format!("{text:?}"),
        Err(_) => format!("hex:{}", hex::encode(bytes)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cases_parse_and_bad_ones_say_where() -> anyhow::Result<()> {
        let text = r#"
[[call]]
to = ".hello"
payload = "world"
answer = "hello, world"

[[call]]
to = "blue/:00000100"
payload_hex = "00ff"
error = "killed"
"#;
        let cases = parse(text, "tests/a.toml")?;
        assert_eq!(cases.len(), 2);
        assert_eq!(cases[1].name, "tests/a.toml#2");
        assert_eq!(cases[1].payload, [0, 0xff]);
        assert!(matches!(&cases[1].expected, Expected::Error(e) if e == "killed"));

        let unknown =
            parse("[[call]]\nto = \".x\"\nanswr = \"y\"\n", "t.toml").expect_err("a typo");
        assert!(unknown.to_string().starts_with("t.toml:3:"), "{unknown}");
        let neither = parse("[[call]]\nto = \".x\"\n", "t.toml").expect_err("nothing expected");
        assert!(neither.to_string().contains("t.toml#1"), "{neither}");
        Ok(())
    }
}

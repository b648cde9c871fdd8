//! The files `skyhost new` writes for each language: the language's own
//! manifest, a first service that registers `.<name>` and answers a
//! request `x` with `hello, x`, the node file that runs it and a test case.

use std::path::Path;

use super::Lang;

/// `(path in the project, contents)` of a new project named `name`; `sdk`
/// is the Rust SDK's directory (Rust projects depend on it by path).
pub fn files(lang: Lang, name: &str, sdk: &Path) -> Vec<(String, String)> {
    let mut files = match lang {
        Lang::Rust => rust(name, sdk),
        Lang::C => c(name),
        Lang::Js => js(name),
        Lang::Python => python(name),
    };
    files.push(("skyhost.toml".into(), node_file(name)));
    files.push((format!("tests/{name}.toml"), test_cases(name)));
    files.push((".gitignore".into(), gitignore(lang)));
    files
}

/// The node file: runs the service from `build/`, with a console.
fn node_file(name: &str) -> String {
    format!(
        r#"# The node `skyhost run` starts here: it runs `{name}` (built into build/ by
# `skyhost build`) and serves a console (`skyhost ctl ...` from this directory).
log_level = "info"
module_paths = ["build"]

[bootstrap]
module = "{name}"

[limits]
memory_mb = 64
max_services = 1000

# The control address takes `skyhost ctl` and `skyhost console`; `skyhost run`
# writes the address it bound to .skyhost/node.json. A development secret:
# change it before the node listens anywhere but 127.0.0.1.
[control]
address = "127.0.0.1:0"
secret = "dev"
"#
    )
}

/// The project's first test case (`skyhost test`).
fn test_cases(name: &str) -> String {
    format!(
        r#"# `skyhost test` builds the project, runs the node of skyhost.toml and makes
# each call below, checking its answer (`answer`, `answer_hex`, or a part of
# the `error` it must end with).
[[call]]
to = ".{name}"
payload = "world"
answer = "hello, world"
"#
    )
}

fn gitignore(lang: Lang) -> String {
    let own = match lang {
        Lang::Rust => "/target\nCargo.lock\n",
        Lang::C => "",
        Lang::Js => "/node_modules\n",
        Lang::Python => "__pycache__/\n",
    };
    format!("/build\n/.skyhost\n{own}")
}

fn rust(name: &str, sdk: &Path) -> Vec<(String, String)> {
    let sdk = sdk.display().to_string().replace('\\', "/");
    let manifest = format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"

# A service is a cdylib: built for wasm32-wasip2 it is a component
# (`skyhost build` builds it and names the module `{name}`).
[lib]
crate-type = ["cdylib"]

[dependencies]
# The SDK this skyhost carries, written under the skyhost home by
# `skyhost new` (by path until it is on crates.io).
skyhost-sdk = {{ path = "{sdk}" }}

# A project of its own, not a member of a workspace around it.
[workspace]
"#
    );
    let service = format!(
        r#"//! `{name}`: registers `.{name}` and answers a request carrying text `x`
//! with `hello, x`.

use std::rc::Rc;

use skyhost_sdk::{{Message, Reply, Service, export_service}};

struct Hello;

impl Service for Hello {{
    fn init(_args: Vec<u8>) -> Result<Self, String> {{
        skyhost_sdk::register(".{name}").map_err(|e| e.to_string())?;
        Ok(Hello)
    }}

    async fn handle(self: Rc<Self>, msg: Message) -> Reply {{
        let who = String::from_utf8_lossy(&msg.payload);
        Reply::bytes(format!("hello, {{who}}").into_bytes())
    }}
}}

export_service!(Hello);
"#
    );
    vec![
        ("Cargo.toml".into(), manifest),
        ("src/lib.rs".into(), service),
    ]
}

fn c(name: &str) -> Vec<(String, String)> {
    let makefile = format!(
        "# `make` builds src/{name}.c into build/{name}.wasm (skyhost build does the work:\n\
         # clang, wasi-libc and the C SDK, installed when missing).\n\
         all:\n\tskyhost build .\n\n\
         run: all\n\tskyhost run\n\n\
         .PHONY: all run\n"
    );
    let service = format!(
        r#"/* {name}: registers ".{name}" and answers a request carrying text x
 * with "hello, x". */
#include <stdio.h>
#include <string.h>

#include "skyhost.h"

int sky_init(const uint8_t *args, size_t len, const char **error) {{
    (void)args;
    (void)len;
    if (sky_register(".{name}") != SKY_OK) {{
        *error = "could not register .{name}";
        return 1;
    }}
    return 0;
}}

void sky_handle(const sky_msg *m) {{
    if (m->kind != SKY_REQUEST) {{
        return;
    }}
    char text[256];
    int n = snprintf(text, sizeof text, "hello, %.*s", (int)m->len, (const char *)m->data);
    size_t len = n < 0 ? 0 : (size_t)n < sizeof text ? (size_t)n : sizeof text - 1;
    sky_respond(m->source, m->session, text, len);
}}
"#
    );
    vec![
        ("Makefile".into(), makefile),
        (format!("src/{name}.c"), service),
    ]
}

fn js(name: &str) -> Vec<(String, String)> {
    let manifest = format!(
        r#"{{
  "name": "{name}",
  "version": "0.1.0",
  "private": true,
  "description": "A skyhost service: src/{name}.js, built into build/{name}.wasm",
  "scripts": {{
    "build": "skyhost build .",
    "start": "skyhost run"
  }}
}}
"#
    );
    let service = format!(
        r#"// {name}: registers ".{name}" and answers a request carrying text x with
// "hello, x". `service`, `register` and the rest come from the skyhost SDK,
// which `skyhost build` puts in front of this file.
const utf8 = new TextDecoder();
const encoder = new TextEncoder();

service({{
  init() {{
    register('.{name}');
  }},
  handle(m) {{
    return encoder.encode(`hello, ${{utf8.decode(m.payload)}}`);
  }},
}});
"#
    );
    vec![
        ("package.json".into(), manifest),
        (format!("src/{name}.js"), service),
    ]
}

fn python(name: &str) -> Vec<(String, String)> {
    let manifest = format!(
        r#"[project]
name = "{name}"
version = "0.1.0"
description = "A skyhost service: src/{name}.py, built into build/{name}.wasm by `skyhost build`"
requires-python = ">=3.11"
"#
    );
    let service = format!(
        r#""""{name}: registers ".{name}" and answers a request carrying text x with "hello, x"."""

import skyhost
from skyhost import WitWorld  # noqa: F401  (the component's exports)


def init(args: bytes) -> None:
    skyhost.register(".{name}")


async def handle(m):
    return b"hello, " + m.payload


skyhost.service(handle, init)
"#
    );
    vec![
        ("pyproject.toml".into(), manifest),
        (format!("src/{name}.py"), service),
    ]
}

//! What WASI a tenant's services get: nothing by default; the directories,
//! environment variables and TCP destinations its tenant file grants;
//! clocks and random always.
//!
//! Directories are opened with cap-std (inside wasmtime-wasi), so a path
//! cannot leave its directory, neither with `..` nor through a symlink that
//! points out. Outbound TCP goes through wasmtime-wasi's socket address
//! check, against the granted `host:port` list (host names resolved when
//! the service starts).

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;

use wasmtime_wasi::sockets::SocketAddrUse;
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder};

use super::stdio::{LogOutput, Stream};
use crate::runtime::tenant::Tenant;

/// The WASI context of one service of `tenant`.
///
/// # Errors
/// When a granted directory cannot be opened (it names the tenant and path).
pub(crate) fn wasi_for(tenant: &Tenant) -> wasmtime::Result<WasiCtx> {
    let mut b = WasiCtxBuilder::new();
    b.stdout(LogOutput {
        stream: Stream::Stdout,
    })
    .stderr(LogOutput {
        stream: Stream::Stderr,
    });
    for d in &tenant.dirs {
        let perms = if d.read_only {
            FsPerms::ReadOnly
        } else {
            FsPerms::ReadWrite
        };
        b.preopened_dir(&d.host, &d.guest, perms).map_err(|e| {
            wasmtime::format_err!(
                "tenant `{}`: directory {} (as {}): {e:#}",
                tenant.name,
                d.host.display(),
                d.guest
            )
        })?;
    }
    for (k, v) in &tenant.env {
        b.env(k, v);
    }
    if !tenant.tcp_connect.is_empty() {
        let allowed: Arc<[SocketAddr]> = tenant
            .tcp_connect
            .iter()
            .filter_map(|a| a.to_socket_addrs().ok())
            .flatten()
            .collect();
        b.allow_tcp(true).socket_addr_check(move |addr, used| {
            // A connect binds an ephemeral local port first (checked as a
            // bind of the unspecified address); nothing may listen.
            let ok = match used {
                SocketAddrUse::TcpConnect => allowed.contains(&addr),
                SocketAddrUse::TcpBind => addr.ip().is_unspecified() && addr.port() == 0,
                _ => false,
            };
            Box::pin(async move { ok })
        });
    }
    Ok(b.build())
}

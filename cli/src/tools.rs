//! Outside programs the tests and benchmarks run: a command-line tool from
//! `PATH` or else from its Debian package (downloaded with `apt-get
//! download` and unpacked, no root install), and a throwaway etcd server.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Why a tool could not be had or started.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ToolError(String);

fn fail(what: impl std::fmt::Display) -> ToolError {
    ToolError(what.to_string())
}

/// `tool`'s path on `PATH`.
fn on_path(tool: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(tool))
        .find(|p| p.is_file())
}

/// `tool` from `PATH`, or else from Debian's `package`, downloaded once and
/// unpacked under `dir` (where later calls find it).
///
/// # Errors
/// When `apt-get download` or `dpkg-deb` fail, or the package has no such tool.
pub fn debian_tool(tool: &str, package: &str, dir: &Path) -> Result<PathBuf, ToolError> {
    if let Some(path) = on_path(tool) {
        return Ok(path);
    }
    let root = dir.join(package);
    let unpacked = root.join("usr/bin").join(tool);
    if unpacked.is_file() {
        return Ok(unpacked);
    }
    let debs = dir.join("debs");
    std::fs::create_dir_all(&debs).map_err(|e| fail(format_args!("{}: {e}", debs.display())))?;
    let download = || {
        Command::new("apt-get")
            .args(["download", "-q", package])
            .current_dir(&debs)
            .status()
            .map_err(|e| fail(format_args!("apt-get: {e}")))
    };
    if !download()?.success() {
        // A fresh machine may have no package lists yet.
        let updated = Command::new("apt-get")
            // Wait for another apt-get holding the lock rather than fail.
            .args(["-o", "DPkg::Lock::Timeout=600", "update", "-q"])
            .status()
            .map_err(|e| fail(format_args!("apt-get: {e}")))?;
        if !updated.success() || !download()?.success() {
            return Err(fail(format_args!("apt-get download {package} failed")));
        }
    }
    let deb = std::fs::read_dir(&debs)
        .map_err(|e| fail(format_args!("{}: {e}", debs.display())))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(&format!("{package}_")))
        })
        .ok_or_else(|| fail(format_args!("no {package}_*.deb in {}", debs.display())))?;
    let status = Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(&root)
        .status()
        .map_err(|e| fail(format_args!("dpkg-deb: {e}")))?;
    if !status.success() || !unpacked.is_file() {
        return Err(fail(format_args!(
            "{package}: no usr/bin/{tool} after dpkg-deb -x {}",
            deb.display()
        )));
    }
    Ok(unpacked)
}

/// A single-member etcd server on 127.0.0.1, on ports free when it was
/// made, its data in a temporary directory; killed when dropped.
pub struct Etcd {
    binary: PathBuf,
    child: Option<Child>,
    client_port: u16,
    peer_port: u16,
    data: tempfile::TempDir,
    tls: Option<EtcdServerTls>,
}

/// TLS for an [`Etcd`]'s clients: its certificate and key, and the CA its
/// clients' certificates must chain to (`--client-cert-auth`).
#[derive(Debug, Clone)]
pub struct EtcdServerTls {
    /// etcd's certificate (PEM).
    pub cert: PathBuf,
    /// Its key (PEM).
    pub key: PathBuf,
    /// The CA of the clients' certificates (PEM).
    pub ca: PathBuf,
}

fn free_port() -> Result<u16, ToolError> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| fail(format_args!("a free port: {e}")))
}

impl Etcd {
    /// Starts the etcd `binary` and waits until it serves clients.
    ///
    /// # Errors
    /// When it cannot start, exits, or does not serve within 20 s.
    pub fn start(binary: PathBuf) -> Result<Etcd, ToolError> {
        Self::start_with(binary, None)
    }

    /// [`Etcd::start`], serving clients over TLS with `tls` when given.
    ///
    /// # Errors
    /// As [`Etcd::start`].
    pub fn start_with(binary: PathBuf, tls: Option<EtcdServerTls>) -> Result<Etcd, ToolError> {
        // A port found free can be taken by another process before etcd
        // binds it (tests start many servers at once): try fresh ports.
        let mut attempts = 3;
        loop {
            let mut etcd = Etcd {
                binary: binary.clone(),
                child: None,
                client_port: free_port()?,
                peer_port: free_port()?,
                data: tempfile::tempdir()
                    .map_err(|e| fail(format_args!("a data directory: {e}")))?,
                tls: tls.clone(),
            };
            match etcd.restart() {
                Ok(()) => return Ok(etcd),
                Err(e) if attempts > 1 && e.to_string().contains("address already in use") => {
                    attempts -= 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// `etcd://127.0.0.1:<port>/<prefix>`, for a node file's `discovery`.
    pub fn url(&self, prefix: &str) -> String {
        format!("etcd://127.0.0.1:{}/{prefix}", self.client_port)
    }

    /// Kills the server, keeping its data for [`restart`](Self::restart).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same ports and data, and waits until
    /// it serves clients.
    ///
    /// # Errors
    /// As [`start`](Self::start).
    pub fn restart(&mut self) -> Result<(), ToolError> {
        self.stop();
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let client = format!("{scheme}://127.0.0.1:{}", self.client_port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let mut command = Command::new(&self.binary);
        if let Some(tls) = &self.tls {
            command
                .arg(format!("--cert-file={}", tls.cert.display()))
                .arg(format!("--key-file={}", tls.key.display()))
                .arg(format!("--trusted-ca-file={}", tls.ca.display()))
                .arg("--client-cert-auth");
        }
        let mut child = command
            .arg("--name=local")
            .arg(format!("--data-dir={}", self.data.path().display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=local={peer}"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| fail(format_args!("starting {}: {e}", self.binary.display())))?;
        let stderr = child.stderr.take().ok_or_else(|| fail("etcd's stderr"))?;
        self.child = Some(child);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut ready = Some(tx);
            let mut seen = Vec::new();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("ready to serve client requests")
                    && let Some(tx) = ready.take()
                {
                    let _ = tx.send(Ok(()));
                }
                if ready.is_some() {
                    seen.push(line);
                }
            }
            if let Some(tx) = ready {
                let _ = tx.send(Err(seen.join("\n")));
            }
        });
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(log)) => Err(fail(format_args!("etcd exited before serving:\n{log}"))),
            Err(_) => Err(fail("etcd did not serve within 20 s")),
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}

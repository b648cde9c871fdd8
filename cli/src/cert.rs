//! `skyhost cert`: a small certificate authority for a fleet's TLS links
//! (docs/tls.md). `ca DIR` makes `DIR/ca.pem` and `DIR/ca.key`; `node NAME
//! --ca DIR` makes `NAME.pem` and `NAME.key` signed by it: a certificate
//! naming the node (a DNS name equal to its node name, which is what a peer
//! checks against the name the node gives in the link handshake), usable
//! both to serve and to connect.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
pub use time::OffsetDateTime;

/// How long the certificates made here are valid, in days.
const VALID_DAYS: u32 = 825;

/// Makes a CA in `dir` (`ca.pem`, `ca.key`); refuses to replace one.
///
/// # Errors
/// When `dir` holds a CA already or cannot be written.
pub fn make_ca(dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    let (cert_file, key_file) = (dir.join("ca.pem"), dir.join("ca.key"));
    if cert_file.exists() || key_file.exists() {
        bail!("{} holds a CA already (ca.pem, ca.key)", dir.display());
    }
    let mut params = CertificateParams::default();
    params.distinguished_name = name("skyhost fleet CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut params);
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    write(&cert_file, &cert.pem())?;
    write_secret(&key_file, &key.serialize_pem())?;
    Ok((cert_file, key_file))
}

/// Makes `<out>/<node>.pem` and `<out>/<node>.key`, signed by the CA in
/// `ca_dir`, naming `node`. `node` may list more names after commas
/// (`harbor-1,harbor-master`, `game1,harbor-1`): the certificate names each,
/// and its files are named after the first.
///
/// # Errors
/// When the CA cannot be read, a name is no DNS name, or a file cannot be
/// written.
pub fn make_node(ca_dir: &Path, node: &str, out: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    let now = now();
    make_node_valid(ca_dir, node, out, now - HOUR, now + VALID_DAYS * DAY)
}

/// [`make_node`] with the validity given: a test's expired certificate,
/// or one not valid yet.
///
/// # Errors
/// As [`make_node`].
pub fn make_node_valid(
    ca_dir: &Path,
    node: &str,
    out: &Path,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> anyhow::Result<(PathBuf, PathBuf)> {
    let read = |f: &str| {
        let path = ca_dir.join(f);
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
    };
    let names: Vec<String> = node.split(',').map(str::to_string).collect();
    for n in &names {
        skyhost::transport::tls::check_node_name(n)?;
    }
    let first = names[0].clone();
    let ca_key = KeyPair::from_pem(&read("ca.key")?).context("ca.key")?;
    let issuer = Issuer::from_ca_cert_pem(&read("ca.pem")?, ca_key).context("ca.pem")?;
    let mut params = CertificateParams::new(names)
        .with_context(|| format!("`{node}` cannot be named in a certificate"))?;
    params.distinguished_name = name(&first);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.not_before = not_before;
    params.not_after = not_after;
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    std::fs::create_dir_all(out).with_context(|| format!("making {}", out.display()))?;
    let (cert_file, key_file) = (
        out.join(format!("{first}.pem")),
        out.join(format!("{first}.key")),
    );
    write(&cert_file, &cert.pem())?;
    write_secret(&key_file, &key.serialize_pem())?;
    Ok((cert_file, key_file))
}

fn name(common: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common);
    dn
}

/// Now, as certificates write it.
pub fn now() -> OffsetDateTime {
    rcgen::date_time_ymd(1970, 1, 1)
        + std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
}

/// An hour: certificates start that far back, so a peer whose clock is a
/// little behind accepts them.
pub const HOUR: Duration = Duration::from_secs(3600);
/// A day.
pub const DAY: Duration = Duration::from_secs(86_400);

fn validity(params: &mut CertificateParams) {
    let now = now();
    params.not_before = now - HOUR;
    params.not_after = now + VALID_DAYS * DAY;
}

fn write(file: &Path, text: &str) -> anyhow::Result<()> {
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("making {}", dir.display()))?;
    }
    std::fs::write(file, text).with_context(|| format!("writing {}", file.display()))
}

/// Writes a private key readable by its owner only.
fn write_secret(file: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(file)
        .with_context(|| format!("writing {}", file.display()))?;
    f.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", file.display()))
}

//! `mqttkit pki`: a private CA, broker and client certificates (rcgen).
//!
//! Layout under `OUT/certs/`: `ca.crt`, `ca.key`, `broker.crt`, `broker.key`,
//! and for each client `NAME.crt`, `NAME.key` (PKCS#8 v1 PEM) and
//! `NAME_pkcs8.key` (PKCS#8 v1 DER, for Java's `PKCS8EncodedKeySpec`).
//! One module per subcommand family: `renew`, `export`, `import` (the CA
//! from elsewhere), `inspect` (list and inspect); `profile` says what goes
//! into a certificate, `keys` how keys are read and written.

mod args;
mod export;
mod import;
pub mod inspect;
mod inventory;
pub mod keys;
mod names;
pub mod profile;
mod renew;
pub mod revoke;
pub mod subject;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::ValueEnum;
use rcgen::{Issuer, KeyPair};

use crate::fsutil::{StagedFiles, MODE_PUBLIC, MODE_SECRET};
use crate::output;

pub use crate::identity::{certs_dir, validate_identity, DEFAULT_DEVICE, DEFAULT_SERVER};
pub use args::*;
pub use inspect::{inspect_dir, CertInfo};
pub use names::HostName;
pub use profile::{ca_params, client_params, server_params, Issued};
use profile::{ca_params_for, client_params_for, server_params_for, sign};
use subject::Subject;

/// File stems `pki init` uses itself: a client named so would replace them.
const RESERVED_NAMES: &[&str] = &["ca", "broker"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyType {
    /// ECDSA on P-256 with SHA-256 (accepted everywhere; fast).
    #[default]
    #[value(alias = "p256", alias = "ecdsa")]
    EcdsaP256,
    /// ECDSA on P-384 with SHA-384.
    #[value(alias = "p384")]
    EcdsaP384,
    /// Ed25519 (OpenSSL 1.1.1+/mosquitto, Java 15+, rustls; not AWS IoT).
    Ed25519,
    /// RSA 2048 with SHA-256, for older stacks.
    #[value(alias = "rsa")]
    Rsa2048,
    /// RSA 3072 with SHA-256.
    Rsa3072,
}

impl KeyType {
    /// A new key, in the PKCS#8 v1 form every stack reads.
    pub fn generate(self) -> Result<KeyPair> {
        use rcgen::RsaKeySize;
        let key = match self {
            KeyType::EcdsaP256 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256),
            KeyType::EcdsaP384 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384),
            KeyType::Ed25519 => KeyPair::generate_for(&rcgen::PKCS_ED25519),
            KeyType::Rsa2048 => {
                KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, RsaKeySize::_2048)
            }
            KeyType::Rsa3072 => {
                KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, RsaKeySize::_3072)
            }
        };
        let key = key.with_context(|| format!("generating a {} key", self.label()))?;
        keys::normalize(key)
    }

    pub fn label(self) -> &'static str {
        match self {
            KeyType::EcdsaP256 => "ECDSA P-256",
            KeyType::EcdsaP384 => "ECDSA P-384",
            KeyType::Ed25519 => "Ed25519",
            KeyType::Rsa2048 => "RSA 2048",
            KeyType::Rsa3072 => "RSA 3072",
        }
    }

    /// The key type of an existing key, for `renew --new-key`.
    pub fn of(alg: keys::KeyAlg) -> Option<Self> {
        match alg {
            keys::KeyAlg::EcP256 => Some(KeyType::EcdsaP256),
            keys::KeyAlg::EcP384 => Some(KeyType::EcdsaP384),
            keys::KeyAlg::Ed25519 => Some(KeyType::Ed25519),
            keys::KeyAlg::Rsa(2048) => Some(KeyType::Rsa2048),
            keys::KeyAlg::Rsa(3072) => Some(KeyType::Rsa3072),
            _ => None,
        }
    }
}

/// Default validity of broker and client certificates, in days (the
/// CA/Browser Forum's old maximum, which Apple platforms still enforce).
pub const DEFAULT_DAYS: u32 = 825;
/// Default validity of the CA certificate, in days.
pub const DEFAULT_CA_DAYS: u32 = 3650;

pub fn run(args: PkiArgs) -> Result<ExitCode> {
    let done = |r: Result<()>| r.map(|()| ExitCode::SUCCESS);
    match args.command {
        PkiCommand::Init(a) => done(init(&a.config()?)),
        PkiCommand::Issue(a) => done(issue(a.config()?)),
        PkiCommand::List(a) => inventory::list(a),
        PkiCommand::Renew(a) => done(renew::run(&a)),
        PkiCommand::Inspect(a) => done(inventory::inspect_cmd(&a)),
        PkiCommand::Export(a) => done(export::run(&a)),
        PkiCommand::ImportCa(a) => done(import::run(&a)),
        PkiCommand::Revoke(a) => done(revoke::run(&a)),
    }
}

/// The broker's default names: loopback plus this machine's hostname.
pub fn default_hosts() -> Vec<HostName> {
    let mut hosts = vec![
        HostName::Dns("localhost".into()),
        HostName::Ip("127.0.0.1".parse().expect("valid")),
        HostName::Ip("::1".parse().expect("valid")),
    ];
    if let Ok(h) = gethostname::gethostname().into_string() {
        if let Ok(h) = HostName::parse(&h) {
            if !hosts.contains(&h) {
                hosts.push(h);
            }
        }
    }
    hosts
}

fn parse_hosts(raw: &[String]) -> Result<Vec<HostName>> {
    let mut hosts = Vec::new();
    for h in raw {
        let h = HostName::parse(h)?;
        if !hosts.contains(&h) {
            hosts.push(h);
        }
    }
    Ok(hosts)
}

pub(crate) fn stage_identity(
    files: &mut StagedFiles,
    dir: &Path,
    name: &str,
    issued: &Issued,
    der: bool,
) {
    files.add(
        dir.join(format!("{name}.crt")),
        issued.cert_pem.clone(),
        MODE_PUBLIC,
    );
    files.add(
        dir.join(format!("{name}.key")),
        issued.key.serialize_pem(),
        MODE_SECRET,
    );
    if der {
        files.add(
            dir.join(format!("{name}_pkcs8.key")),
            issued.key.serialize_der(),
            MODE_SECRET,
        );
    }
}

pub fn init(args: &InitConfig) -> Result<()> {
    let hosts = if args.hosts.is_empty() {
        default_hosts()
    } else {
        parse_hosts(&args.hosts)?
    };
    let mut clients: Vec<String> = Vec::new();
    let requested = if args.clients.is_empty() {
        vec![DEFAULT_DEVICE.to_string(), DEFAULT_SERVER.to_string()]
    } else {
        args.clients.clone()
    };
    for c in requested {
        validate_identity(&c).map_err(|e| anyhow::anyhow!("--client '{c}': {e}"))?;
        if RESERVED_NAMES.contains(&c.as_str()) {
            bail!("--client '{c}' is reserved for the {c} certificate; choose another name");
        }
        if !clients.contains(&c) {
            clients.push(c);
        }
    }
    let dir = certs_dir(&args.out);
    check_out_dir(&args.out)?;

    let ca_key = args.key_type.generate()?;
    let ca = ca_params_for(&args.subject, args.ca_days);
    let ca_cert = ca.self_signed(&ca_key).context("creating CA certificate")?;
    let mut files = StagedFiles::new();
    files.add(dir.join("ca.crt"), ca_cert.pem(), MODE_PUBLIC);
    let ca_key_pem = if args.encrypt_ca_key {
        let plain = keys::PrivateKey::from_der(&ca_key.serialize_der())?;
        import::ca_key_pem(&plain, true)?
    } else {
        ca_key.serialize_pem()
    };
    files.add(dir.join("ca.key"), ca_key_pem, MODE_SECRET);
    let issuer = Issuer::new(ca, ca_key);

    let broker = sign(
        server_params_for(&args.subject, "mqttkit broker", &hosts, args.days),
        args.key_type,
        &issuer,
    )?;
    stage_identity(&mut files, &dir, "broker", &broker, false);
    for c in &clients {
        let params = client_params_for(&args.subject, c, args.days);
        let issued = sign(params, args.key_type, &issuer)?;
        stage_identity(&mut files, &dir, c, &issued, true);
    }
    let written = files.commit(args.force).map_err(anyhow::Error::from)?;
    let names: Vec<String> = hosts.iter().map(ToString::to_string).collect();
    report_written(&written, args.json, |s| {
        s.push_str(&format!(
            "CA, broker and {} client certificate(s) ({}) in {}\nbroker names: {}\n",
            clients.len(),
            args.key_type.label(),
            dir.display(),
            names.join(", ")
        ))
    })
}

pub(crate) fn report_written(
    written: &[PathBuf],
    json: bool,
    header: impl FnOnce(&mut String),
) -> Result<()> {
    if json {
        let files: Vec<String> = written.iter().map(|p| p.display().to_string()).collect();
        output::print_json(&serde_json::json!({ "written": files }))
    } else {
        let mut s = String::new();
        header(&mut s);
        for p in written {
            s.push_str(&format!("  {}\n", p.display()));
        }
        output::print_stdout(&s)
    }
}

/// Fails early, naming the flag, when `--out` cannot hold files.
fn check_out_dir(out: &Path) -> Result<()> {
    let mut probe = out;
    // Walk up to the first existing ancestor and check it is a writable directory.
    loop {
        if probe.exists() {
            break;
        }
        match probe.parent() {
            Some(p) if !p.as_os_str().is_empty() => probe = p,
            _ => return Ok(()),
        }
    }
    if !probe.is_dir() {
        bail!(
            "--out {}: {} is not a directory; choose another --out",
            out.display(),
            probe.display()
        );
    }
    if nix::unistd::access(probe, nix::unistd::AccessFlags::W_OK).is_err() {
        bail!(
            "--out {}: {} is not writable; choose a writable --out",
            out.display(),
            probe.display()
        );
    }
    Ok(())
}

/// Loads the CA in `certs_dir` as an issuer.
pub fn load_issuer(certs_dir: &Path) -> Result<Issuer<'static, KeyPair>> {
    let ca_crt = certs_dir.join("ca.crt");
    let ca_key = certs_dir.join("ca.key");
    // A write that crashed half way is finished or undone before the CA is read.
    crate::fsutil::recover_dir(certs_dir)?;
    if !ca_crt.exists() || !ca_key.exists() {
        bail!(
            "no CA in {} (ca.crt and ca.key); create one with `mqttkit pki init --out {}`",
            certs_dir.display(),
            certs_dir.parent().unwrap_or(certs_dir).display()
        );
    }
    let (key, _) = keys::PrivateKey::read(&ca_key, &mut import::passphrase)?;
    let key = key.key_pair()?;
    let cert_pem = std::fs::read_to_string(&ca_crt)
        .with_context(|| format!("reading {}", ca_crt.display()))?;
    Issuer::from_ca_cert_pem(&cert_pem, key)
        .map_err(|e| anyhow::anyhow!("{}: not a usable CA certificate: {e}", ca_crt.display()))
}

pub fn issue(args: IssueConfig) -> Result<()> {
    validate_identity(&args.name).map_err(|e| anyhow::anyhow!("NAME '{}': {e}", args.name))?;
    if RESERVED_NAMES.contains(&args.name.as_str()) && !(args.server && args.name == "broker") {
        bail!(
            "NAME '{}' is reserved for the {} certificate; choose another name",
            args.name,
            args.name
        );
    }
    if !args.server && !args.hosts.is_empty() {
        bail!("--host only applies to server certificates; add --server or drop --host");
    }
    let dir = certs_dir(&args.out);
    let issuer = load_issuer(&dir)?;
    warn_if_outliving_the_ca(&dir, args.days);
    let subject = match &args.subject {
        Some(s) => s.clone(),
        None => ca_subject(&dir)?,
    };
    let mut files = StagedFiles::new();
    let params = if args.server {
        let hosts = if args.hosts.is_empty() {
            default_hosts()
        } else {
            parse_hosts(&args.hosts)?
        };
        server_params_for(&subject, &args.name, &hosts, args.days)
    } else {
        client_params_for(&subject, &args.name, args.days)
    };
    if !args.server {
        warn_if_nested(&dir, &args.name);
    }
    let issued = sign(params, args.key_type, &issuer)?;
    stage_identity(&mut files, &dir, &args.name, &issued, true);
    let written = files.commit(args.force)?;
    let kind = if args.server { "server" } else { "client" };
    report_written(&written, args.json, |s| {
        s.push_str(&format!(
            "{kind} certificate '{}' ({}) signed by {}\n",
            args.name,
            args.key_type.label(),
            dir.join("ca.crt").display()
        ))
    })
}

/// `broker up` lets identity NAME use the client ids NAME and NAME-*, so of
/// two identities where one is the other plus "-…" (`line-1`,
/// `line-1-pump-3`) the shorter may use the longer's ids: warn.
fn warn_if_nested(certs_dir: &Path, name: &str) {
    let Ok(entries) = std::fs::read_dir(certs_dir) else {
        return;
    };
    let others = entries.flatten().filter_map(|e| {
        let file = e.file_name().into_string().ok()?;
        let stem = file.strip_suffix(".crt")?.to_string();
        (!RESERVED_NAMES.contains(&stem.as_str()) && stem != name).then_some(stem)
    });
    for other in others {
        let (short, long) = match (
            crate::identity::client_id_belongs_to(name, &other),
            crate::identity::client_id_belongs_to(&other, name),
        ) {
            (true, _) => (other.as_str(), name),
            (_, true) => (name, other.as_str()),
            _ => continue,
        };
        crate::note!(
            "warning: identity '{short}' may use the client ids of '{long}' (`broker up` lets NAME use NAME and NAME-*, so it can take over {long}'s sessions); choose names where neither is the other plus '-…'"
        );
        return;
    }
}

/// The CA's subject attributes other than CN: what leaves inherit.
fn ca_subject(certs_dir: &Path) -> Result<Subject> {
    let der = crate::identity::read_cert_der(&certs_dir.join("ca.crt"))?;
    let (_, ca) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| anyhow::anyhow!("{}: {e}", certs_dir.join("ca.crt").display()))?;
    Ok(Subject::of_cert(&ca))
}

/// A leaf that expires after its CA stops verifying when the CA does, not
/// when its own date says: warn with both dates.
fn warn_if_outliving_the_ca(certs_dir: &Path, days: u32) {
    let Ok(der) = crate::identity::read_cert_der(&certs_dir.join("ca.crt")) else {
        return;
    };
    let Ok((_, ca)) = x509_parser::parse_x509_certificate(&der) else {
        return;
    };
    let ca_end = ca.validity().not_after.to_datetime();
    let leaf_end = ::time::OffsetDateTime::now_utc() + ::time::Duration::days(i64::from(days));
    if leaf_end > ca_end {
        let left = (ca_end - ::time::OffsetDateTime::now_utc())
            .whole_days()
            .max(0);
        crate::note!(
            "warning: --days {days} outlives the CA, which expires {} ({left} days left); the certificate stops verifying then; pass --days {left} or less, or replace the CA before it expires",
            ca_end.date()
        );
    }
}

/// The client identity NAME under `OUT/certs`: the existing `NAME.crt` and
/// `NAME.key`, or a new pair issued by the local CA and written (never
/// overwriting). For callers that report themselves (`iot create-thing --ca
/// local`); `true` when issued now.
pub fn client_identity(
    out: &Path,
    name: &str,
    key_type: KeyType,
    days: u32,
) -> Result<(Issued, bool)> {
    validate_identity(name).map_err(|e| anyhow::anyhow!("NAME '{name}': {e}"))?;
    let dir = certs_dir(out);
    let (crt, key) = crate::identity::files(&dir, name);
    if crt.exists() && key.exists() {
        let cert_pem =
            std::fs::read_to_string(&crt).with_context(|| format!("reading {}", crt.display()))?;
        let cert_der = crate::identity::read_cert_der(&crt)?;
        let (k, _) = keys::PrivateKey::read(&key, &mut import::passphrase)?;
        let key = k.key_pair()?;
        return Ok((
            Issued {
                cert_pem,
                cert_der,
                key,
            },
            false,
        ));
    }
    if RESERVED_NAMES.contains(&name) {
        bail!("NAME '{name}' is reserved for the {name} certificate; choose another name");
    }
    let issuer = load_issuer(&dir)?;
    let params = client_params_for(&ca_subject(&dir)?, name, days);
    let issued = sign(params, key_type, &issuer)?;
    let mut files = StagedFiles::new();
    stage_identity(&mut files, &dir, name, &issued, true);
    files.commit(false)?;
    Ok((issued, true))
}

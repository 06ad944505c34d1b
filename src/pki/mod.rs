//! `mqttkit pki`: a private CA, broker and client certificates (rcgen).
//!
//! Layout under `OUT/certs/`: `ca.crt`, `ca.key`, `broker.crt`, `broker.key`,
//! and for each client `NAME.crt`, `NAME.key` (PKCS#8 PEM) and
//! `NAME_pkcs8.key` (PKCS#8 DER, for Java's `PKCS8EncodedKeySpec`).

pub mod inspect;
mod names;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SerialNumber,
};
use time::{Duration, OffsetDateTime};

use crate::fsutil::{StagedFiles, MODE_PUBLIC, MODE_SECRET};
use crate::output;

pub use crate::identity::{certs_dir, validate_identity, DEFAULT_DEVICE, DEFAULT_SERVER};
pub use inspect::{inspect_dir, CertInfo};
pub use names::HostName;

/// File stems `pki init` uses itself: a client named so would replace them.
const RESERVED_NAMES: &[&str] = &["ca", "broker"];

#[derive(Debug, Args)]
pub struct PkiArgs {
    #[command(subcommand)]
    pub command: PkiCommand,
}

#[derive(Debug, Subcommand)]
pub enum PkiCommand {
    /// Create a CA, a broker certificate and client certificates.
    Init(InitArgs),
    /// Issue one more client (or server) certificate from the existing CA.
    Issue(IssueArgs),
    /// List the certificates with their names, expiry and whether they chain to the CA.
    List(ListArgs),
}

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
    /// Ed25519 (OpenSSL 1.1.1+/mosquitto, rustls; not Java 8 or AWS IoT).
    Ed25519,
    /// RSA 2048 with SHA-256, for older stacks.
    #[value(alias = "rsa")]
    Rsa2048,
    /// RSA 3072 with SHA-256.
    Rsa3072,
}

impl KeyType {
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
        key.with_context(|| format!("generating a {} key", self.label()))
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
}

#[derive(Debug, Args)]
pub struct OutArg {
    /// The global `--out DIR` (declared once, in cli.rs).
    #[arg(from_global)]
    pub out: PathBuf,
}

impl OutArg {
    pub fn certs_dir(&self) -> PathBuf {
        certs_dir(&self.out)
    }
}

/// Default validity of broker and client certificates, in days (the
/// CA/Browser Forum's old maximum, which Apple platforms still enforce).
pub const DEFAULT_DAYS: u32 = 825;
/// Default validity of the CA certificate, in days.
pub const DEFAULT_CA_DAYS: u32 = 3650;

/// What `pki init` is asked to create, from flags or built by a caller.
#[derive(Debug, Clone)]
pub struct InitConfig {
    pub out: PathBuf,
    pub clients: Vec<String>,
    pub hosts: Vec<String>,
    pub key_type: KeyType,
    pub days: u32,
    pub ca_days: u32,
    pub force: bool,
    pub json: bool,
}

impl InitConfig {
    /// The defaults of `pki init` for output root `out`.
    pub fn new(out: &Path) -> Self {
        InitConfig {
            out: out.to_path_buf(),
            clients: Vec::new(),
            hosts: Vec::new(),
            key_type: KeyType::default(),
            days: DEFAULT_DAYS,
            ca_days: DEFAULT_CA_DAYS,
            force: false,
            json: false,
        }
    }
}

impl InitArgs {
    pub fn config(&self) -> InitConfig {
        InitConfig {
            out: self.out.out.clone(),
            clients: self.clients.clone(),
            hosts: self.hosts.clone(),
            key_type: self.key_type,
            days: self.days,
            ca_days: self.ca_days,
            force: self.force,
            json: self.json,
        }
    }
}

#[derive(Debug, Args)]
pub struct InitArgs {
    #[command(flatten)]
    pub out: OutArg,
    /// A client identity (certificate CN) to issue; repeatable.
    /// Default: device-001 and server.
    #[arg(long = "client", value_name = "NAME")]
    pub clients: Vec<String>,
    /// A DNS name or IP address the broker is reached by; repeatable.
    /// Default: localhost, 127.0.0.1, ::1 and this machine's hostname.
    #[arg(long = "host", value_name = "NAME_OR_IP")]
    pub hosts: Vec<String>,
    #[arg(long, value_enum, default_value_t)]
    pub key_type: KeyType,
    /// Validity of broker and client certificates, in days.
    #[arg(long, default_value_t = DEFAULT_DAYS, value_parser = clap::value_parser!(u32).range(1..=36500))]
    pub days: u32,
    /// Validity of the CA certificate, in days.
    #[arg(long, default_value_t = DEFAULT_CA_DAYS, value_parser = clap::value_parser!(u32).range(1..=36500))]
    pub ca_days: u32,
    /// Replace existing files.
    #[arg(long)]
    pub force: bool,
    /// Print the files written as one JSON object on stdout: {"written": [paths]}.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct IssueArgs {
    /// The identity (certificate CN and file name).
    pub name: String,
    #[command(flatten)]
    pub out: OutArg,
    /// Issue a server certificate (EKU serverAuth, SANs from --host) instead of a client one.
    #[arg(long)]
    pub server: bool,
    /// With --server: a DNS name or IP address for the certificate; repeatable.
    #[arg(long = "host", value_name = "NAME_OR_IP")]
    pub hosts: Vec<String>,
    #[arg(long, value_enum, default_value_t)]
    pub key_type: KeyType,
    #[arg(long, default_value_t = DEFAULT_DAYS, value_parser = clap::value_parser!(u32).range(1..=36500))]
    pub days: u32,
    /// Replace existing files for NAME.
    #[arg(long)]
    pub force: bool,
    /// Print the files written as one JSON object on stdout: {"written": [paths]}.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub out: OutArg,
    /// Print the certificates (subject, issuer, validity, SANs, ...) as one JSON array on stdout.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: PkiArgs) -> Result<()> {
    match args.command {
        PkiCommand::Init(a) => init(&a.config()),
        PkiCommand::Issue(a) => issue(a),
        PkiCommand::List(a) => list(a),
    }
}

/// A certificate and its key, PEM encoded, ready to be written.
pub struct Issued {
    pub cert_pem: String,
    pub key: KeyPair,
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f; // positive, per RFC 5280
    bytes[0] |= 0x01; // never a leading zero byte
    SerialNumber::from_slice(&bytes)
}

fn validity(params: &mut CertificateParams, days: u32) {
    let now = OffsetDateTime::now_utc();
    // A little slack for peers whose clocks run behind.
    params.not_before = now - Duration::minutes(5);
    params.not_after = now + Duration::days(i64::from(days));
}

fn dn(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "mqttkit");
    dn.push(DnType::CommonName, cn);
    dn
}

pub fn ca_params(days: u32) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = dn("mqttkit Root CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.serial_number = Some(random_serial());
    params.use_authority_key_identifier_extension = false;
    validity(&mut params, days);
    params
}

/// An end-entity certificate for `cn` with one extended key usage.
fn leaf_params(cn: &str, usage: ExtendedKeyUsagePurpose, days: u32) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = dn(cn);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![usage];
    params.serial_number = Some(random_serial());
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, days);
    params
}

pub fn server_params(cn: &str, hosts: &[HostName], days: u32) -> CertificateParams {
    let mut params = leaf_params(cn, ExtendedKeyUsagePurpose::ServerAuth, days);
    params.subject_alt_names = hosts.iter().map(HostName::to_san).collect();
    params
}

pub fn client_params(name: &str, days: u32) -> CertificateParams {
    leaf_params(name, ExtendedKeyUsagePurpose::ClientAuth, days)
}

fn sign(
    params: CertificateParams,
    key_type: KeyType,
    issuer: &Issuer<'_, KeyPair>,
) -> Result<Issued> {
    let key = key_type.generate()?;
    let cert = params
        .signed_by(&key, issuer)
        .context("signing certificate")?;
    Ok(Issued {
        cert_pem: cert.pem(),
        key,
    })
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

fn stage_identity(files: &mut StagedFiles, dir: &Path, name: &str, issued: &Issued, der: bool) {
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
    let ca_cert = ca_params(args.ca_days)
        .self_signed(&ca_key)
        .context("creating CA certificate")?;
    let mut files = StagedFiles::new();
    files.add(dir.join("ca.crt"), ca_cert.pem(), MODE_PUBLIC);
    files.add(dir.join("ca.key"), ca_key.serialize_pem(), MODE_SECRET);
    let issuer = Issuer::new(ca_params(args.ca_days), ca_key);

    let broker = sign(
        server_params("mqttkit broker", &hosts, args.days),
        args.key_type,
        &issuer,
    )?;
    stage_identity(&mut files, &dir, "broker", &broker, false);
    for c in &clients {
        let issued = sign(client_params(c, args.days), args.key_type, &issuer)?;
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

fn report_written(written: &[PathBuf], json: bool, header: impl FnOnce(&mut String)) -> Result<()> {
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
    let key_pem = std::fs::read_to_string(&ca_key)
        .with_context(|| format!("reading {}", ca_key.display()))?;
    let key = KeyPair::from_pem(&key_pem)
        .map_err(|e| anyhow::anyhow!("{}: not a usable private key: {e}", ca_key.display()))?;
    let cert_pem = std::fs::read_to_string(&ca_crt)
        .with_context(|| format!("reading {}", ca_crt.display()))?;
    Issuer::from_ca_cert_pem(&cert_pem, key)
        .map_err(|e| anyhow::anyhow!("{}: not a usable CA certificate: {e}", ca_crt.display()))
}

pub fn issue(args: IssueArgs) -> Result<()> {
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
    let dir = args.out.certs_dir();
    let issuer = load_issuer(&dir)?;
    warn_if_outliving_the_ca(&dir, args.days);
    let mut files = StagedFiles::new();
    let issued = if args.server {
        let hosts = if args.hosts.is_empty() {
            default_hosts()
        } else {
            parse_hosts(&args.hosts)?
        };
        sign(
            server_params(&args.name, &hosts, args.days),
            args.key_type,
            &issuer,
        )?
    } else {
        sign(client_params(&args.name, args.days), args.key_type, &issuer)?
    };
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

fn list(args: ListArgs) -> Result<()> {
    let dir = args.out.certs_dir();
    if !dir.is_dir() {
        bail!(
            "no certificates in {}; create them with `mqttkit pki init --out {}`",
            dir.display(),
            args.out.out.display()
        );
    }
    crate::fsutil::recover_dir(&dir)?;
    let infos = inspect_dir(&dir)?;
    if args.json {
        return output::print_json(&infos);
    }
    let mut s = String::new();
    for i in &infos {
        s.push_str(&i.render_text());
    }
    if infos.is_empty() {
        s.push_str(&format!("no certificates in {}\n", dir.display()));
    }
    output::print_stdout(&s)
}

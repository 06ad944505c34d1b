//! The command line of `mqttkit pki` and the resolved configs the library
//! functions take.

use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::{Args, Subcommand};

use super::subject::Subject;
use super::{certs_dir, KeyType, DEFAULT_CA_DAYS, DEFAULT_DAYS};

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
    /// Issue a certificate again: same subject and names, new validity (and, with --new-key, a new key).
    Renew(RenewArgs),
    /// Show what a certificate, CSR or key file holds (PEM or DER), from anywhere.
    Inspect(InspectArgs),
    /// Write an identity as PKCS#12 (--p12) or in another format (--format).
    Export(ExportArgs),
    /// Use an existing CA (certificate and key made elsewhere) to issue from.
    ImportCa(ImportCaArgs),
    /// Revoke a certificate: record it and write OUT/certs/crl.pem, which `broker up` enforces.
    Revoke(RevokeArgs),
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

/// `--subject` and `--org`, shared by `init` and `issue`.
#[derive(Debug, Args, Default, Clone)]
pub struct SubjectArgs {
    /// Subject attributes besides the CN, e.g. "O=Acme,OU=Sensors,C=JP" (C, ST, L, O, OU; `\,` for a comma).
    #[arg(long, value_name = "ATTRS")]
    pub subject: Option<String>,
    /// The organization (O=); shorthand for --subject "O=ORG".
    #[arg(long, value_name = "ORG")]
    pub org: Option<String>,
}

impl SubjectArgs {
    pub fn resolve(&self) -> Result<Option<Subject>> {
        Subject::from_flags(self.subject.as_deref(), self.org.as_deref())
    }
}

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
    /// Subject attributes of the CA and every certificate (default O=mqttkit).
    pub subject: Subject,
    /// Write ca.key encrypted (passphrase from MQTTKIT_CA_PASSPHRASE or a prompt).
    pub encrypt_ca_key: bool,
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
            subject: Subject::default(),
            encrypt_ca_key: false,
        }
    }
}

impl InitArgs {
    pub fn config(&self) -> Result<InitConfig> {
        Ok(InitConfig {
            out: self.out.out.clone(),
            clients: self.clients.clone(),
            hosts: self.hosts.clone(),
            key_type: self.key_type,
            days: self.days,
            ca_days: self.ca_days,
            force: self.force,
            json: self.json,
            subject: self.subject.resolve()?.unwrap_or_default(),
            encrypt_ca_key: self.encrypt_ca_key,
        })
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
    #[command(flatten)]
    pub subject: SubjectArgs,
    /// Store ca.key as encrypted PKCS#8 (scrypt, AES-256-CBC); the passphrase comes from
    /// MQTTKIT_CA_PASSPHRASE or a terminal prompt, here and for every later issue/renew/revoke/bench.
    #[arg(long)]
    pub encrypt_ca_key: bool,
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
    /// Default: the CA's subject attributes (its O, OU, ...).
    #[command(flatten)]
    pub subject: SubjectArgs,
    /// Replace existing files for NAME.
    #[arg(long)]
    pub force: bool,
    /// Print the files written as one JSON object on stdout: {"written": [paths]}.
    #[arg(long)]
    pub json: bool,
}

/// What `pki issue` is asked to create.
#[derive(Debug, Clone)]
pub struct IssueConfig {
    pub out: PathBuf,
    pub name: String,
    pub server: bool,
    pub hosts: Vec<String>,
    pub key_type: KeyType,
    pub days: u32,
    pub force: bool,
    pub json: bool,
    /// `None`: the CA's subject attributes.
    pub subject: Option<Subject>,
}

impl IssueConfig {
    /// The defaults of `pki issue NAME` for output root `out`.
    pub fn new(out: &Path, name: &str) -> Self {
        IssueConfig {
            out: out.to_path_buf(),
            name: name.to_string(),
            server: false,
            hosts: Vec::new(),
            key_type: KeyType::default(),
            days: DEFAULT_DAYS,
            force: false,
            json: false,
            subject: None,
        }
    }
}

impl IssueArgs {
    pub fn config(&self) -> Result<IssueConfig> {
        Ok(IssueConfig {
            out: self.out.out.clone(),
            name: self.name.clone(),
            server: self.server,
            hosts: self.hosts.clone(),
            key_type: self.key_type,
            days: self.days,
            force: self.force,
            json: self.json,
            subject: self.subject.resolve()?,
        })
    }
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub out: OutArg,
    /// Print the certificates (subject, issuer, validity, SANs, ...) as one JSON array on stdout.
    #[arg(long)]
    pub json: bool,
    /// Exit with status 3 when a certificate expires within DAYS days (for cron and CI);
    /// those certificates are named on stderr.
    #[arg(long, value_name = "DAYS")]
    pub expiring: Option<u32>,
}

#[derive(Debug, Args)]
pub struct RenewArgs {
    /// The identity to renew (a file stem in OUT/certs: device-001, server, broker, ...).
    pub name: String,
    #[command(flatten)]
    pub out: OutArg,
    /// Validity of the new certificate, in days.
    #[arg(long, default_value_t = DEFAULT_DAYS, value_parser = clap::value_parser!(u32).range(1..=36500))]
    pub days: u32,
    /// Generate a new key of the same type (default: keep the key).
    #[arg(long)]
    pub new_key: bool,
    /// Print the files written as one JSON object on stdout: {"written": [paths]}.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// A certificate, CSR or private key file (PEM or DER).
    pub file: PathBuf,
    /// Print one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    /// One PEM file: private key (PKCS#8), certificate, CA certificate.
    Pem,
    /// The certificate and the key (PKCS#8) as DER: NAME.crt.der and NAME.key.der.
    Der,
    /// The key in the traditional form: PKCS#1 for RSA, SEC1 for EC (none for Ed25519).
    Pkcs1,
    /// The key as PKCS#8 v1 PEM.
    Pkcs8,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The identity to export (NAME.crt and NAME.key in OUT/certs).
    pub name: String,
    #[command(flatten)]
    pub out: OutArg,
    /// Write a PKCS#12 keystore (AES-256/PBES2, HMAC-SHA256; the CA as a trusted entry).
    #[arg(long, conflicts_with = "format")]
    pub p12: bool,
    /// Read the PKCS#12 password from the first line of stdin (default: ask on the terminal).
    #[arg(long, requires = "p12")]
    pub password_stdin: bool,
    #[arg(long, value_enum, required_unless_present = "p12")]
    pub format: Option<ExportFormat>,
    /// Where to write (default OUT/export/NAME.p12, .pem, .pkcs1.key or .pkcs8.key; for
    /// der, a directory); `-` writes PEM formats to stdout.
    #[arg(long, value_name = "PATH")]
    pub output: Option<PathBuf>,
    /// Replace existing files.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct ImportCaArgs {
    #[command(flatten)]
    pub out: OutArg,
    /// The CA certificate (PEM or DER; basicConstraints CA:TRUE).
    #[arg(long, value_name = "FILE")]
    pub cert: PathBuf,
    /// Its private key: PKCS#8, PKCS#1 or SEC1, PEM or DER, or encrypted PKCS#8
    /// (passphrase from MQTTKIT_CA_PASSPHRASE, or asked on a terminal).
    #[arg(long, value_name = "FILE")]
    pub key: PathBuf,
    /// Replace an existing CA (certificates it issued stop chaining).
    #[arg(long)]
    pub force: bool,
    /// Store ca.key encrypted (see `pki init --encrypt-ca-key`).
    #[arg(long)]
    pub encrypt_ca_key: bool,
    /// Print the files written as one JSON object on stdout: {"written": [paths]}.
    #[arg(long)]
    pub json: bool,
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum RevokeReason {
    Unspecified,
    /// The key leaked or may have.
    KeyCompromise,
    AffiliationChanged,
    /// Replaced by a renewed certificate.
    Superseded,
    /// The device is retired.
    CessationOfOperation,
}

#[derive(Debug, Args)]
pub struct RevokeArgs {
    /// The identity whose certificate (OUT/certs/NAME.crt) is revoked.
    pub name: String,
    #[command(flatten)]
    pub out: OutArg,
    /// The reason recorded in the CRL.
    #[arg(long, value_enum, default_value = "unspecified")]
    pub reason: RevokeReason,
    /// How long the CRL is valid (its nextUpdate), in days; kept for re-issues. Default 30.
    #[arg(long, value_name = "DAYS", value_parser = clap::value_parser!(u32).range(1..=365))]
    pub crl_days: Option<u32>,
}

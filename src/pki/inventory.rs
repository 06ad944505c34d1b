//! `pki list` (with `--expiring DAYS` for cron and CI) and `pki inspect
//! FILE`: what a certificate, CSR or key file holds, wherever it came from.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Result};
use serde::Serialize;
use x509_parser::prelude::*;

use super::inspect::{hex, inspect_der, inspect_dir, key_type_of, CertInfo};
use super::keys::{pem_blocks, KeyError, KeyForm, PrivateKey};
use super::{InspectArgs, ListArgs};
use crate::output;

/// The exit status of `pki list --expiring` when something expires soon.
pub const EXIT_EXPIRING: u8 = 3;

pub fn list(args: ListArgs) -> Result<ExitCode> {
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
        output::print_json(&infos)?;
    } else {
        let mut s = String::new();
        for i in &infos {
            s.push_str(&i.render_text());
        }
        if infos.is_empty() {
            s.push_str(&format!("no certificates in {}\n", dir.display()));
        }
        output::print_stdout(&s)?;
    }
    let Some(days) = args.expiring else {
        return Ok(ExitCode::SUCCESS);
    };
    let soon: Vec<&CertInfo> = infos
        .iter()
        .filter(|i| i.days_left < i64::from(days))
        .collect();
    for i in &soon {
        crate::note!(
            "{} expires {} ({} days left, within --expiring {days}); renew it with `mqttkit pki renew {}`",
            i.file.display(),
            i.not_after,
            i.days_left,
            i.file.file_stem().unwrap_or_default().to_string_lossy()
        );
    }
    Ok(if soon.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_EXPIRING)
    })
}

/// What `pki inspect` found in a file.
#[derive(Debug, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
enum Found {
    Certificate(Box<CertInfo>),
    Csr(CsrInfo),
    PrivateKey(KeyInfo),
    EncryptedPrivateKey { file: String },
}

#[derive(Debug, Serialize)]
struct CsrInfo {
    file: String,
    subject: String,
    key_type: String,
    sans: Vec<String>,
    signature_valid: bool,
}

#[derive(Debug, Serialize)]
struct KeyInfo {
    file: String,
    key_type: String,
    format: KeyForm,
    /// SHA-256 of the public key, to match it with a certificate.
    public_key_sha256: String,
}

pub fn inspect_cmd(args: &InspectArgs) -> Result<()> {
    let path = &args.file;
    let data =
        std::fs::read(path).map_err(|e| anyhow::anyhow!("{}: cannot read: {e}", path.display()))?;
    let found = identify(path, &data)?;
    if args.json {
        return output::print_json(&found);
    }
    output::print_stdout(&render(&found))
}

fn identify(path: &Path, data: &[u8]) -> Result<Found> {
    let blocks = pem_blocks(data);
    let (label, der) = match blocks.first() {
        Some((label, der, _)) => (Some(label.as_str()), der.clone()),
        None => (None, data.to_vec()),
    };
    let is = |want: &[&str]| label.is_none_or(|l| want.contains(&l));
    if is(&["CERTIFICATE", "TRUSTED CERTIFICATE"]) && parse_x509_certificate(&der).is_ok() {
        let ca = path.parent().map(|d| d.join("ca.crt"));
        let ca_der = ca
            .filter(|c| c.exists() && c != path)
            .and_then(|c| crate::identity::read_cert_der(&c).ok());
        let info = inspect_der(path, &der, ca_der.as_deref())?;
        return Ok(Found::Certificate(Box::new(info)));
    }
    if is(&["CERTIFICATE REQUEST", "NEW CERTIFICATE REQUEST"]) {
        if let Ok((_, csr)) = X509CertificationRequest::from_der(&der) {
            return Ok(Found::Csr(csr_info(path, &csr)));
        }
    }
    let mut no_passphrase = || Err(KeyError::NoPassphrase);
    match PrivateKey::parse(data, &mut no_passphrase) {
        Ok((key, format)) => Ok(Found::PrivateKey(KeyInfo {
            file: path.display().to_string(),
            key_type: key.alg.label(),
            format,
            public_key_sha256: hex(aws_lc_rs::digest::digest(
                &aws_lc_rs::digest::SHA256,
                &key.public,
            )
            .as_ref()),
        })),
        Err(KeyError::NoPassphrase) => Ok(Found::EncryptedPrivateKey {
            file: path.display().to_string(),
        }),
        Err(_) => bail!(
            "{}: not a certificate, CSR or private key (PEM{} or DER); check the file",
            path.display(),
            label.map(|l| format!(" block '{l}'")).unwrap_or_default()
        ),
    }
}

fn csr_info(path: &Path, csr: &X509CertificationRequest<'_>) -> CsrInfo {
    let info = &csr.certification_request_info;
    let mut sans = Vec::new();
    for ext in csr.requested_extensions().into_iter().flatten() {
        if let ParsedExtension::SubjectAlternativeName(san) = ext {
            for n in &san.general_names {
                sans.push(match n {
                    GeneralName::DNSName(d) => format!("DNS:{d}"),
                    GeneralName::IPAddress(b) => format!("IP:{}", super::inspect::ip_from_bytes(b)),
                    other => format!("{other:?}"),
                });
            }
        }
    }
    CsrInfo {
        file: path.display().to_string(),
        subject: info.subject.to_string(),
        key_type: key_type_of(&info.subject_pki),
        sans,
        signature_valid: csr.verify_signature().is_ok(),
    }
}

fn render(found: &Found) -> String {
    match found {
        Found::Certificate(c) => c.render_text(),
        Found::Csr(c) => format!(
            "{}\n  CSR       {}\n  key       {}\n  names     {}\n  signature {}\n",
            c.file,
            c.subject,
            c.key_type,
            c.sans.join(", "),
            if c.signature_valid {
                "valid"
            } else {
                "INVALID"
            }
        ),
        Found::PrivateKey(k) => format!(
            "{}\n  private key {} ({})\n  public key SHA-256 {}\n",
            k.file,
            k.key_type,
            k.format.label(),
            k.public_key_sha256
        ),
        Found::EncryptedPrivateKey { file } => {
            format!("{file}\n  encrypted private key (PKCS#8); its type shows once decrypted\n")
        }
    }
}

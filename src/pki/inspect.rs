//! Reading certificates back: subject, names, key type, expiry, chain and key match.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;
use x509_parser::extensions::GeneralName;
use x509_parser::oid_registry;
use x509_parser::prelude::*;

#[derive(Debug, Serialize)]
pub struct CertInfo {
    pub file: PathBuf,
    pub subject: String,
    pub common_name: Option<String>,
    pub issuer: String,
    pub sans: Vec<String>,
    pub key_type: String,
    pub is_ca: bool,
    pub extended_key_usage: Vec<String>,
    /// keyUsage bits, in openssl's names (digitalSignature, keyEncipherment, ...).
    pub key_usage: Vec<String>,
    /// Subject Key Identifier, hex.
    pub subject_key_id: Option<String>,
    /// Authority Key Identifier (keyIdentifier), hex.
    pub authority_key_id: Option<String>,
    pub serial: String,
    pub not_before: String,
    pub not_after: String,
    pub days_left: i64,
    /// Signed by `ca.crt` in the same directory.
    pub chains_to_ca: bool,
    /// Listed in `revoked.json` beside it (`pki revoke`).
    pub revoked: bool,
    /// `true`/`false` when a key file with the same stem exists; `null` when none.
    pub key_matches: Option<bool>,
}

impl CertInfo {
    pub fn render_text(&self) -> String {
        let yes_no = |b: bool| if b { "yes" } else { "NO" };
        let key = match self.key_matches {
            Some(true) => "matches",
            Some(false) => "DOES NOT MATCH",
            None => "no key file",
        };
        let mut s = format!(
            "{}\n  subject   {}\n  issuer    {}\n  key       {} ({})\n  expires   {} ({} days left)\n  chains to ca.crt: {}\n",
            self.file.display(),
            self.subject,
            self.issuer,
            self.key_type,
            key,
            self.not_after,
            self.days_left,
            yes_no(self.chains_to_ca),
        );
        if self.revoked {
            s.push_str("  REVOKED   (pki revoke; in crl.pem)\n");
        }
        if self.is_ca {
            s.push_str("  CA        yes\n");
        }
        if !self.sans.is_empty() {
            s.push_str(&format!("  names     {}\n", self.sans.join(", ")));
        }
        let usage: Vec<&str> = self
            .key_usage
            .iter()
            .chain(&self.extended_key_usage)
            .map(String::as_str)
            .collect();
        if !usage.is_empty() {
            s.push_str(&format!("  usage     {}\n", usage.join(", ")));
        }
        s
    }
}

pub use crate::identity::read_cert_der;

pub fn key_type_of(spki: &SubjectPublicKeyInfo<'_>) -> String {
    let alg = &spki.algorithm.algorithm;
    if *alg == oid_registry::OID_PKCS1_RSAENCRYPTION {
        match spki.parsed() {
            Ok(x509_parser::public_key::PublicKey::RSA(rsa)) => {
                format!("RSA {}", rsa.key_size())
            }
            _ => "RSA".into(),
        }
    } else if *alg == oid_registry::OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok());
        match curve {
            Some(c) if c == oid_registry::OID_EC_P256 => "ECDSA P-256".into(),
            Some(c) if c == oid_registry::OID_NIST_EC_P384 => "ECDSA P-384".into(),
            Some(c) if c == oid_registry::OID_NIST_EC_P521 => "ECDSA P-521".into(),
            _ => "ECDSA".into(),
        }
    } else if *alg == oid_registry::OID_SIG_ED25519 {
        "Ed25519".into()
    } else {
        alg.to_id_string()
    }
}

/// The public key (as in a certificate's subjectPublicKey) of an
/// unencrypted key file in any form `keys` reads.
pub fn public_key_of_key_file(path: &Path) -> Result<Vec<u8>> {
    let mut no_passphrase = || Err(super::keys::KeyError::NoPassphrase);
    let (key, _) = super::keys::PrivateKey::read(path, &mut no_passphrase)?;
    Ok(key.public)
}

pub fn inspect_file(path: &Path, ca_der: Option<&[u8]>) -> Result<CertInfo> {
    let der = read_cert_der(path)?;
    inspect_der(path, &der, ca_der)
}

/// A certificate's details; `path` names it and locates its key file.
pub fn inspect_der(path: &Path, der: &[u8], ca_der: Option<&[u8]>) -> Result<CertInfo> {
    let (_, cert) = parse_x509_certificate(der)
        .map_err(|e| anyhow::anyhow!("{}: not an X.509 certificate: {e}", path.display()))?;
    let ca = ca_der.and_then(|d| parse_x509_certificate(d).ok().map(|(_, c)| c));
    let chains_to_ca = ca.as_ref().is_some_and(|ca| {
        cert.issuer() == ca.subject() && cert.verify_signature(Some(ca.public_key())).is_ok()
    });
    let mut sans = Vec::new();
    if let Ok(Some(ext)) = cert.subject_alternative_name() {
        for n in &ext.value.general_names {
            match n {
                GeneralName::DNSName(d) => sans.push(format!("DNS:{d}")),
                GeneralName::IPAddress(b) => sans.push(format!("IP:{}", ip_from_bytes(b))),
                other => sans.push(format!("{other:?}")),
            }
        }
    }
    let mut eku = Vec::new();
    if let Ok(Some(ext)) = cert.extended_key_usage() {
        if ext.value.server_auth {
            eku.push("serverAuth".to_string());
        }
        if ext.value.client_auth {
            eku.push("clientAuth".to_string());
        }
    }
    let is_ca = matches!(cert.basic_constraints(), Ok(Some(bc)) if bc.value.ca);
    let (subject_key_id, authority_key_id) = key_ids(&cert);
    let key_file = path.with_extension("key");
    let key_matches = if key_file.exists() {
        Some(
            public_key_of_key_file(&key_file)
                .map(|public| public == cert.public_key().subject_public_key.data.as_ref())
                .unwrap_or(false),
        )
    } else {
        None
    };
    let not_after = cert.validity().not_after.to_datetime();
    let days_left = (not_after - ::time::OffsetDateTime::now_utc()).whole_days();
    let common_name = crate::identity::common_name(&cert);
    let fmt = |t: ::time::OffsetDateTime| {
        t.format(&::time::format_description::well_known::Rfc3339)
            .unwrap_or_else(|_| t.to_string())
    };
    let info = CertInfo {
        file: path.to_path_buf(),
        subject: cert.subject().to_string(),
        common_name,
        issuer: cert.issuer().to_string(),
        sans,
        key_type: key_type_of(cert.public_key()),
        is_ca,
        extended_key_usage: eku,
        key_usage: key_usage(&cert),
        subject_key_id,
        authority_key_id,
        serial: cert.raw_serial_as_string(),
        not_before: fmt(cert.validity().not_before.to_datetime()),
        not_after: fmt(not_after),
        days_left,
        chains_to_ca,
        revoked: false,
        key_matches,
    };
    Ok(info)
}

pub(crate) fn hex(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn key_ids(cert: &X509Certificate<'_>) -> (Option<String>, Option<String>) {
    let mut ski = None;
    let mut aki = None;
    for ext in cert.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(id) => ski = Some(hex(id.0)),
            ParsedExtension::AuthorityKeyIdentifier(a) => {
                aki = a.key_identifier.as_ref().map(|id| hex(id.0));
            }
            _ => {}
        }
    }
    (ski, aki)
}

fn key_usage(cert: &X509Certificate<'_>) -> Vec<String> {
    let Ok(Some(ku)) = cert.key_usage() else {
        return Vec::new();
    };
    let ku = ku.value;
    [
        (ku.digital_signature(), "digitalSignature"),
        (ku.non_repudiation(), "nonRepudiation"),
        (ku.key_encipherment(), "keyEncipherment"),
        (ku.data_encipherment(), "dataEncipherment"),
        (ku.key_agreement(), "keyAgreement"),
        (ku.key_cert_sign(), "keyCertSign"),
        (ku.crl_sign(), "cRLSign"),
    ]
    .into_iter()
    .filter(|(on, _)| *on)
    .map(|(_, n)| n.to_string())
    .collect()
}

pub(crate) fn ip_from_bytes(b: &[u8]) -> String {
    match b.len() {
        4 => std::net::Ipv4Addr::from(<[u8; 4]>::try_from(b).expect("len 4")).to_string(),
        16 => std::net::Ipv6Addr::from(<[u8; 16]>::try_from(b).expect("len 16")).to_string(),
        _ => format!("{b:02x?}"),
    }
}

/// Every `*.crt` in `dir`, the CA first.
pub fn inspect_dir(dir: &Path) -> Result<Vec<CertInfo>> {
    let ca_path = dir.join("ca.crt");
    let ca_der = if ca_path.exists() {
        Some(read_cert_der(&ca_path)?)
    } else {
        None
    };
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "crt"))
        .collect();
    paths.sort_by_key(|p| (p != &ca_path, p.clone()));
    let revoked = super::revoke::read_revoked(dir)?;
    let mut infos = paths
        .iter()
        .map(|p| inspect_file(p, ca_der.as_deref()))
        .collect::<Result<Vec<_>>>()?;
    for i in &mut infos {
        i.revoked = revoked.entries.iter().any(|e| e.serial == i.serial);
    }
    Ok(infos)
}

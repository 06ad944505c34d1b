//! `pki revoke NAME [--reason R]`: records the certificate's serial in
//! `OUT/certs/revoked.json` and writes `OUT/certs/crl.pem`, signed by the
//! CA, valid for [`CRL_DAYS`] days; `broker up` then renders `crlfile`, so
//! mosquitto refuses the revoked certificate at its next TLS handshake.
//! Both files are one transaction. Not done here: re-reading the CRL in a
//! running broker (restart it with `broker up`) and re-issuing the CRL
//! before its nextUpdate (revoke again or rerun to renew it).

use std::path::Path;

use anyhow::{bail, Result};
use rcgen::{
    CertificateRevocationListParams, KeyIdMethod, RevocationReason, RevokedCertParams, SerialNumber,
};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::{load_issuer, report_written, RevokeArgs, RevokeReason};
use crate::fsutil::{StagedFiles, MODE_PUBLIC};
use crate::identity::{files, read_cert_der, validate_identity};

/// How long a CRL is valid (its nextUpdate): mosquitto refuses every client
/// once it has passed (eclipse-mosquitto/mosquitto#1826).
pub const CRL_DAYS: i64 = 30;

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Revoked {
    pub crl_number: u64,
    pub entries: Vec<RevokedEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RevokedEntry {
    pub name: String,
    /// Hex, as `pki list` shows it (aa:bb:...).
    pub serial: String,
    pub revoked_at: String,
    pub reason: RevokeReason,
}

/// The revocations recorded in `certs_dir` (none when there is no file).
pub fn read_revoked(certs_dir: &Path) -> Result<Revoked> {
    let path = certs_dir.join("revoked.json");
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
            anyhow::anyhow!(
                "{}: not a revocation record: {e}; restore it from a backup",
                path.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Revoked::default()),
        Err(e) => bail!("{}: {e}", path.display()),
    }
}

pub fn run(args: &RevokeArgs) -> Result<()> {
    validate_identity(&args.name).map_err(|e| anyhow::anyhow!("NAME '{}': {e}", args.name))?;
    if args.name == "ca" {
        bail!("NAME 'ca': a CA cannot revoke itself; replace it with `mqttkit pki init --force`");
    }
    let dir = args.out.certs_dir();
    let issuer = load_issuer(&dir)?;
    let (crt, _) = files(&dir, &args.name);
    if !crt.exists() {
        bail!(
            "NAME '{}': there is no {}; see `mqttkit pki list`",
            args.name,
            crt.display()
        );
    }
    let der = read_cert_der(&crt)?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| anyhow::anyhow!("{}: {e}", crt.display()))?;
    let serial = cert.raw_serial_as_string();
    let mut revoked = read_revoked(&dir)?;
    if revoked.entries.iter().any(|e| e.serial == serial) {
        bail!(
            "{} (serial {serial}) is already revoked; nothing to do",
            crt.display()
        );
    }
    let now = OffsetDateTime::now_utc();
    revoked.entries.push(RevokedEntry {
        name: args.name.clone(),
        serial,
        revoked_at: now.format(&time::format_description::well_known::Rfc3339)?,
        reason: args.reason,
    });
    revoked.crl_number += 1;
    let crl = crl_params(&dir, &revoked, now)?
        .signed_by(&issuer)
        .map_err(|e| anyhow::anyhow!("signing the CRL: {e}"))?;
    let mut staged = StagedFiles::new();
    staged.add(dir.join("crl.pem"), crl.pem()?, MODE_PUBLIC);
    staged.add(
        dir.join("revoked.json"),
        serde_json::to_vec_pretty(&revoked)?,
        MODE_PUBLIC,
    );
    let written = staged.commit(true)?;
    report_written(&written, false, |s| {
        s.push_str(&format!(
            "revoked '{}'; the CRL is valid until {} (restart the broker with `mqttkit broker up` to enforce it)\n",
            args.name,
            (now + time::Duration::days(CRL_DAYS)).date()
        ))
    })
}

fn crl_params(
    dir: &Path,
    revoked: &Revoked,
    now: OffsetDateTime,
) -> Result<CertificateRevocationListParams> {
    let mut certs = Vec::new();
    for e in &revoked.entries {
        let bytes: Vec<u8> = e
            .serial
            .split(':')
            .map(|b| u8::from_str_radix(b, 16))
            .collect::<Result<_, _>>()
            .map_err(|_| anyhow::anyhow!("revoked.json: serial '{}' is not hex", e.serial))?;
        certs.push(RevokedCertParams {
            serial_number: SerialNumber::from_slice(&bytes),
            revocation_time: time::OffsetDateTime::parse(
                &e.revoked_at,
                &time::format_description::well_known::Rfc3339,
            )
            .unwrap_or(now),
            reason_code: Some(e.reason.into()),
            invalidity_date: None,
        });
    }
    Ok(CertificateRevocationListParams {
        this_update: now - time::Duration::minutes(5),
        next_update: now + time::Duration::days(CRL_DAYS),
        crl_number: SerialNumber::from(revoked.crl_number),
        issuing_distribution_point: None,
        revoked_certs: certs,
        key_identifier_method: ca_key_id(dir),
    })
}

/// The CA's own Subject Key Identifier, so the CRL's AKI matches it.
fn ca_key_id(dir: &Path) -> KeyIdMethod {
    let ski = read_cert_der(&dir.join("ca.crt")).ok().and_then(|der| {
        let (_, ca) = x509_parser::parse_x509_certificate(&der).ok()?;
        ca.extensions()
            .iter()
            .find_map(|e| match e.parsed_extension() {
                x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(id) => {
                    Some(id.0.to_vec())
                }
                _ => None,
            })
    });
    ski.map_or(KeyIdMethod::Sha256, KeyIdMethod::PreSpecified)
}

impl From<RevokeReason> for RevocationReason {
    fn from(r: RevokeReason) -> Self {
        match r {
            RevokeReason::Unspecified => RevocationReason::Unspecified,
            RevokeReason::KeyCompromise => RevocationReason::KeyCompromise,
            RevokeReason::AffiliationChanged => RevocationReason::AffiliationChanged,
            RevokeReason::Superseded => RevocationReason::Superseded,
            RevokeReason::CessationOfOperation => RevocationReason::CessationOfOperation,
        }
    }
}

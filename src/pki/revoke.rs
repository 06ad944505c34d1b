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
/// `broker up` re-issues a CRL with fewer days left than this (or past).
pub const CRL_REFRESH_DAYS: i64 = 7;

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Revoked {
    pub crl_number: u64,
    /// The CRL's validity when not [`CRL_DAYS`] (`pki revoke --crl-days`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crl_days: Option<i64>,
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
    if let Some(days) = args.crl_days {
        revoked.crl_days = Some(i64::from(days));
    }
    let crl = crl_params(&dir, &revoked, now)?
        .signed_by(&issuer)
        .map_err(|e| anyhow::anyhow!("signing the CRL: {e}"))?;
    let written = write_crl(&dir, &crl.pem()?, &revoked)?;
    // A file check, not an import: pki does not depend on iot.
    if args.out.out.join("iot/ca.json").exists() {
        crate::note!("this CA is registered with AWS IoT: run `mqttkit iot revoke-sync` to mark the certificate REVOKED there too");
    }
    report_written(&written, false, |s| {
        s.push_str(&format!(
            "revoked '{}'; the CRL is valid until {} (a broker running from this out dir is told now; `broker up` enforces it otherwise)\n",
            args.name,
            (now + time::Duration::days(revoked.crl_days.unwrap_or(CRL_DAYS))).date()
        ))
    })
}

/// Re-signs `crl.pem` when its nextUpdate is less than [`CRL_REFRESH_DAYS`]
/// away or past, so mosquitto never loads an expired CRL (which locks out
/// every client). Best effort: a CA key that cannot be read (encrypted, no
/// passphrase) is a warning with the date, not a failure of `broker up`.
/// True when `crl.pem` changed (a running broker must re-read it).
pub fn refresh_crl_if_due(certs_dir: &Path) -> bool {
    let path = certs_dir.join("crl.pem");
    let Ok(data) = std::fs::read(&path) else {
        write_first_crl(certs_dir);
        return false;
    };
    let Some((issuer, next)) = crl_issuer_and_next_update(&data) else {
        return false;
    };
    if Some(issuer) != ca_subject(certs_dir) {
        replace_foreign_crl(certs_dir);
        return true;
    }
    let now = OffsetDateTime::now_utc();
    if next.is_some_and(|n| n - now > time::Duration::days(CRL_REFRESH_DAYS)) {
        return false;
    }
    let Err(e) = reissue(certs_dir, now) else {
        return true;
    };
    crate::note!(
        "warning: {} expires {} and could not be re-issued: {e:#}; mosquitto refuses every client after that date",
        path.display(),
        next.map(|n| n.date().to_string()).unwrap_or_else(|| "(unreadable)".into())
    );
    false
}

/// The raw issuer name and the nextUpdate of a PEM CRL.
fn crl_issuer_and_next_update(pem: &[u8]) -> Option<(Vec<u8>, Option<OffsetDateTime>)> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem).ok()?;
    let (_, crl) = x509_parser::parse_x509_crl(&pem.contents).ok()?;
    let next = crl.next_update().map(|t| t.to_datetime());
    Some((crl.issuer().as_raw().to_vec(), next))
}

fn ca_subject(certs_dir: &Path) -> Option<Vec<u8>> {
    let der = read_cert_der(&certs_dir.join("ca.crt")).ok()?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).ok()?;
    Some(cert.subject().as_raw().to_vec())
}

/// A CRL of an earlier CA (replaced by `pki init --force` or `import-ca`)
/// would make mosquitto refuse every client of the new one: its revocations
/// are moved aside and a new, empty CRL is written (or none, if the CA key
/// needs a passphrase: then `crlfile` is not rendered).
fn replace_foreign_crl(certs_dir: &Path) {
    for f in ["crl.pem", "revoked.json"] {
        let from = certs_dir.join(f);
        let _ = std::fs::rename(&from, certs_dir.join(format!("{f}.earlier-ca")));
    }
    crate::note!(
        "{} was signed by an earlier CA; moved it aside ({}.earlier-ca)",
        certs_dir.join("crl.pem").display(),
        certs_dir.join("crl.pem").display()
    );
    write_first_crl(certs_dir);
}

/// An empty CRL before the first revocation, so the broker has `crlfile`
/// from the start and a later `pki revoke` takes effect on SIGHUP, without a
/// restart. Only with a CA key that needs no passphrase (no prompt from
/// `broker up`); otherwise the first revocation asks for a restart.
fn write_first_crl(certs_dir: &Path) {
    let key = std::fs::read(certs_dir.join("ca.key")).unwrap_or_default();
    if key.is_empty() || super::keys::is_encrypted(&key) {
        return;
    }
    let Ok(issuer) = load_issuer(certs_dir) else {
        return;
    };
    let revoked = Revoked::default();
    let now = OffsetDateTime::now_utc();
    let written = crl_params(certs_dir, &revoked, now)
        .and_then(|p| {
            p.signed_by(&issuer)
                .map_err(|e| anyhow::anyhow!("signing the CRL: {e}"))
        })
        .and_then(|crl| write_crl(certs_dir, &crl.pem()?, &revoked));
    if let Err(e) = written {
        crate::note!("warning: no CRL written ({e:#}); `pki revoke` will need a broker restart");
    }
}

fn reissue(certs_dir: &Path, now: OffsetDateTime) -> Result<()> {
    let issuer = load_issuer(certs_dir)?;
    let mut revoked = read_revoked(certs_dir)?;
    revoked.crl_number += 1;
    let crl = crl_params(certs_dir, &revoked, now)?
        .signed_by(&issuer)
        .map_err(|e| anyhow::anyhow!("signing the CRL: {e}"))?;
    write_crl(certs_dir, &crl.pem()?, &revoked)?;
    crate::note!(
        "re-issued {} (valid until {})",
        certs_dir.join("crl.pem").display(),
        (now + time::Duration::days(revoked.crl_days.unwrap_or(CRL_DAYS))).date()
    );
    Ok(())
}

fn write_crl(certs_dir: &Path, pem: &str, revoked: &Revoked) -> Result<Vec<std::path::PathBuf>> {
    let mut staged = StagedFiles::new();
    staged.add(certs_dir.join("crl.pem"), pem, MODE_PUBLIC);
    staged.add(
        certs_dir.join("revoked.json"),
        serde_json::to_vec_pretty(revoked)?,
        MODE_PUBLIC,
    );
    Ok(staged.commit(true)?)
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
        next_update: now + time::Duration::days(revoked.crl_days.unwrap_or(CRL_DAYS)),
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

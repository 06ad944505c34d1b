//! `pki import-ca --cert FILE --key FILE`: issue from a CA made elsewhere
//! (a company CA, or one made with the openssl recipe). Both files are
//! checked before anything is written: the certificate must be a CA
//! (basicConstraints CA:TRUE, keyCertSign where keyUsage is present) and
//! the key its pair. The key is stored as PKCS#8 v1 (0600) so `pki issue`
//! reads it like one `pki init` made.

use std::path::Path;

use anyhow::{bail, Result};
use x509_parser::prelude::*;

use super::keys::{pem_encode, KeyError, PrivateKey};
use super::{report_written, ImportCaArgs};
use crate::fsutil::{StagedFiles, MODE_PUBLIC, MODE_SECRET};

/// The environment variable an encrypted CA key's passphrase is read from.
pub const PASSPHRASE_ENV: &str = "MQTTKIT_CA_PASSPHRASE";

/// The passphrase of an encrypted CA key: `MQTTKIT_CA_PASSPHRASE`, or
/// asked on the terminal; never from argv.
pub fn passphrase() -> Result<String, KeyError> {
    if let Some(p) = std::env::var_os(PASSPHRASE_ENV) {
        return Ok(p.to_string_lossy().into_owned());
    }
    if !std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        return Err(KeyError::NoPassphrase);
    }
    dialoguer::Password::new()
        .with_prompt("CA key passphrase")
        .interact()
        .map_err(|_| KeyError::NoPassphrase)
}

/// A passphrase to encrypt a new CA key with: `MQTTKIT_CA_PASSPHRASE`, or
/// asked twice on the terminal.
pub fn new_passphrase() -> Result<String> {
    let p = match std::env::var_os(PASSPHRASE_ENV) {
        Some(p) => p.to_string_lossy().into_owned(),
        None if std::io::IsTerminal::is_terminal(&std::io::stdin()) => {
            dialoguer::Password::new()
                .with_prompt("New CA key passphrase")
                .with_confirmation("Repeat it", "the passphrases differ")
                .interact()
                .map_err(|e| anyhow::anyhow!("reading the passphrase: {e}"))?
        }
        None => bail!("--encrypt-ca-key: needs a passphrase; set {PASSPHRASE_ENV} or run on a terminal to be asked"),
    };
    if p.is_empty() {
        bail!("--encrypt-ca-key: the passphrase is empty; give one");
    }
    Ok(p)
}

/// `ca.key` as written: encrypted with a passphrase when asked to.
pub fn ca_key_pem(key: &PrivateKey, encrypt: bool) -> Result<String> {
    if encrypt {
        key.to_encrypted_pem(&new_passphrase()?)
    } else {
        Ok(key.to_pem())
    }
}

pub fn run(args: &ImportCaArgs) -> Result<()> {
    let cert_der = crate::identity::read_cert_der(&args.cert)
        .map_err(|e| anyhow::anyhow!("--cert {}: {e:#}", args.cert.display()))?;
    check_ca(&args.cert, &cert_der)?;
    let (key, form) =
        PrivateKey::read(&args.key, &mut passphrase).map_err(|e| anyhow::anyhow!("--key {e:#}"))?;
    let (_, cert) = parse_x509_certificate(&cert_der).expect("checked by check_ca");
    if key.public != cert.public_key().subject_public_key.data.as_ref() {
        bail!(
            "--key {}: not the key of --cert {} (the public keys differ); give the CA's own key",
            args.key.display(),
            args.cert.display()
        );
    }
    // rcgen must be able to sign with it (and to read the CA's name).
    rcgen::Issuer::from_ca_cert_der(&cert_der.clone().into(), key.key_pair()?).map_err(|e| {
        anyhow::anyhow!("--cert {}: cannot issue from it: {e}", args.cert.display())
    })?;
    let dir = args.out.certs_dir();
    let mut files = StagedFiles::new();
    files.add(
        dir.join("ca.crt"),
        pem_encode("CERTIFICATE", &cert_der),
        MODE_PUBLIC,
    );
    files.add(
        dir.join("ca.key"),
        ca_key_pem(&key, args.encrypt_ca_key)?,
        MODE_SECRET,
    );
    let written = files.commit(args.force)?;
    report_written(&written, args.json, |s| {
        s.push_str(&format!(
            "imported CA '{}' ({} key, read as {}) into {}; ca.key is stored {} (0600)\n",
            cert.subject(),
            key.alg.label(),
            form.label(),
            dir.display(),
            if args.encrypt_ca_key {
                "encrypted"
            } else {
                "unencrypted"
            }
        ))
    })
}

/// A one-line error unless `der` is a CA certificate that can sign certificates.
fn check_ca(path: &Path, der: &[u8]) -> Result<()> {
    let (_, cert) = parse_x509_certificate(der)
        .map_err(|e| anyhow::anyhow!("--cert {}: not an X.509 certificate: {e}", path.display()))?;
    let is_ca = matches!(cert.basic_constraints(), Ok(Some(bc)) if bc.value.ca);
    if !is_ca {
        bail!(
            "--cert {}: not a CA certificate (no basicConstraints CA:TRUE; subject {}); give the CA's certificate, not a device's",
            path.display(),
            cert.subject()
        );
    }
    if let Ok(Some(ku)) = cert.key_usage() {
        if !ku.value.key_cert_sign() {
            bail!(
                "--cert {}: its keyUsage lacks keyCertSign, so it may not sign certificates; give a CA certificate that may",
                path.display()
            );
        }
    }
    let not_after = cert.validity().not_after.to_datetime();
    if not_after < ::time::OffsetDateTime::now_utc() {
        bail!(
            "--cert {}: expired on {}; certificates issued from it would not verify",
            path.display(),
            not_after.date()
        );
    }
    Ok(())
}

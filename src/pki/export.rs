//! `pki export NAME`: an identity for stacks that want another container:
//! PKCS#12 for Java `keytool`/Android (`--p12`: PBES2 AES-256-CBC with
//! PBKDF2-HMAC-SHA256 and an HMAC-SHA256 MAC, which OpenSSL 3 reads without
//! `-legacy`; the CA also as a trusted entry), or `--format
//! pem|der|pkcs1|pkcs8`. Every output holds a private key, so files are 0600.

use std::io::BufRead;
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

use super::keys::{pem_encode, KeyError, PrivateKey};
use super::{ExportArgs, ExportFormat};
use crate::fsutil::{StagedFiles, MODE_SECRET};
use crate::identity::{files, read_cert_der, validate_identity};

/// The identity's certificate, key and CA certificate, checked to belong together.
struct Identity {
    cert: Vec<u8>,
    ca: Vec<u8>,
    key: PrivateKey,
}

fn load(certs_dir: &Path, name: &str) -> Result<Identity> {
    let (crt, key_path) = files(certs_dir, name);
    if !crt.exists() || !key_path.exists() {
        bail!(
            "NAME '{name}': {} or {} is missing; issue it with `mqttkit pki issue {name}`",
            crt.display(),
            key_path.display()
        );
    }
    let cert = read_cert_der(&crt)?;
    let ca = read_cert_der(&certs_dir.join("ca.crt"))?;
    let mut no_passphrase = || Err(KeyError::NoPassphrase);
    let (key, _) = PrivateKey::read(&key_path, &mut no_passphrase)?;
    let (_, parsed) = x509_parser::parse_x509_certificate(&cert)
        .map_err(|e| anyhow::anyhow!("{}: {e}", crt.display()))?;
    if key.public != parsed.public_key().subject_public_key.data.as_ref() {
        bail!(
            "{} does not belong to {}; put the right key back or renew with `mqttkit pki renew {name} --new-key`",
            key_path.display(),
            crt.display()
        );
    }
    let (_, ca_parsed) = x509_parser::parse_x509_certificate(&ca)
        .map_err(|e| anyhow::anyhow!("{}: {e}", certs_dir.join("ca.crt").display()))?;
    if parsed
        .verify_signature(Some(ca_parsed.public_key()))
        .is_err()
    {
        bail!(
            "{} is not signed by {} (issued by an earlier CA?); re-issue it with `mqttkit pki issue {name} --force`",
            crt.display(),
            certs_dir.join("ca.crt").display()
        );
    }
    Ok(Identity { cert, ca, key })
}

pub fn run(args: &ExportArgs) -> Result<()> {
    validate_identity(&args.name).map_err(|e| anyhow::anyhow!("NAME '{}': {e}", args.name))?;
    let dir = args.out.certs_dir();
    crate::fsutil::recover_dir(&dir)?;
    let id = load(&dir, &args.name)?;
    let export_dir = args.out.out.join("export");
    let name = &args.name;
    let mut staged = StagedFiles::new();
    let (default, contents): (&str, Vec<u8>) = match args.format {
        _ if args.p12 => {
            let password = password(args.password_stdin)?;
            (".p12", p12(name, &id, &password)?)
        }
        Some(ExportFormat::Der) => {
            let out = args.output.clone().unwrap_or(export_dir);
            staged.add(out.join(format!("{name}.crt.der")), id.cert, MODE_SECRET);
            staged.add(
                out.join(format!("{name}.key.der")),
                id.key.pkcs8,
                MODE_SECRET,
            );
            return report(staged.commit(args.force)?);
        }
        Some(ExportFormat::Pem) => {
            let mut pem = id.key.to_pem();
            pem.push_str(&pem_encode("CERTIFICATE", &id.cert));
            pem.push_str(&pem_encode("CERTIFICATE", &id.ca));
            (".pem", pem.into_bytes())
        }
        Some(ExportFormat::Pkcs1) => {
            let Some(pem) = id.key.traditional_pem() else {
                bail!(
                    "--format pkcs1: {} keys have no PKCS#1/SEC1 form; use --format pkcs8",
                    id.key.alg.label()
                );
            };
            (".pkcs1.key", pem.into_bytes())
        }
        Some(ExportFormat::Pkcs8) | None => (".pkcs8.key", id.key.to_pem().into_bytes()),
    };
    let target = args
        .output
        .clone()
        .unwrap_or_else(|| export_dir.join(format!("{name}{default}")));
    if target == Path::new("-") {
        if args.p12 {
            bail!("--output -: a PKCS#12 file is binary; give a file name");
        }
        return crate::output::print_stdout(&String::from_utf8_lossy(&contents));
    }
    staged.add(target, contents, MODE_SECRET);
    report(staged.commit(args.force)?)
}

fn report(written: Vec<PathBuf>) -> Result<()> {
    let mut s = String::new();
    for p in written {
        s.push_str(&format!("{}\n", p.display()));
    }
    crate::output::print_stdout(&s)
}

/// A PKCS#12 with the key and chain under alias NAME and the CA as the
/// trusted certificate "ca" (what Java's keytool calls trustedCertEntry).
fn p12(name: &str, id: &Identity, password: &str) -> Result<Vec<u8>> {
    use p12_keystore::{Certificate, KeyStore, KeyStoreEntry, PrivateKeyChain};
    let err = |e: p12_keystore::error::Error| anyhow::anyhow!("building the PKCS#12 file: {e}");
    let leaf = Certificate::from_der(&id.cert).map_err(err)?;
    let ca = Certificate::from_der(&id.ca).map_err(err)?;
    let key = p12_keystore::PrivateKey::from_der(&id.key.pkcs8).map_err(err)?;
    let key_id = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, &id.cert);
    let chain = PrivateKeyChain::new(key_id.as_ref(), key, [leaf, ca.clone()]);
    let mut store = KeyStore::new();
    store.add_entry(name, KeyStoreEntry::PrivateKeyChain(chain));
    store.add_entry("ca", KeyStoreEntry::Certificate(ca));
    store.writer(password).write().map_err(err)
}

/// The PKCS#12 password: the first line of stdin, or asked twice on a terminal.
fn password(from_stdin: bool) -> Result<String> {
    let pw = if from_stdin {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .map_err(|e| anyhow::anyhow!("--password-stdin: cannot read stdin: {e}"))?;
        line.trim_end_matches(['\r', '\n']).to_string()
    } else if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        dialoguer::Password::new()
            .with_prompt("PKCS#12 password")
            .with_confirmation("Repeat it", "the passwords differ")
            .interact()
            .map_err(|e| anyhow::anyhow!("reading the password: {e}"))?
    } else {
        bail!("--p12: needs a password and stdin is not a terminal; pipe it with --password-stdin");
    };
    if pw.is_empty() {
        bail!("--p12: the password is empty; Java and Android refuse keystores without one, so give one");
    }
    Ok(pw)
}

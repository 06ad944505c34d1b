//! `pki renew NAME`: the same identity (subject, names, usages) with a new
//! validity and serial, signed by the current CA; the key is kept unless
//! `--new-key`. The old certificate is replaced atomically (it still
//! verifies until it expires: nothing revokes it).

use std::net::IpAddr;

use anyhow::{bail, Result};
use rcgen::{CertificateParams, ExtendedKeyUsagePurpose};
use x509_parser::prelude::*;

use super::keys::PrivateKey;
use super::profile::{client_params_for, server_params_for, sign_with, validity};
use super::subject::Subject;
use super::{load_issuer, report_written, stage_identity, HostName, KeyType, RenewArgs};
use crate::fsutil::StagedFiles;
use crate::identity::{files, read_cert_der, validate_identity};

pub fn run(args: &RenewArgs) -> Result<()> {
    validate_identity(&args.name).map_err(|e| anyhow::anyhow!("NAME '{}': {e}", args.name))?;
    if args.name == "ca" {
        bail!("NAME 'ca': renewing the CA is not supported; create a new one with `mqttkit pki init --force` or bring one with `mqttkit pki import-ca`");
    }
    let dir = args.out.certs_dir();
    let issuer = load_issuer(&dir)?;
    let (crt, key_path) = files(&dir, &args.name);
    if !crt.exists() {
        bail!(
            "NAME '{}': there is no {}; issue it with `mqttkit pki issue {}`",
            args.name,
            crt.display(),
            args.name
        );
    }
    let der = read_cert_der(&crt)?;
    let (_, old) = parse_x509_certificate(&der)
        .map_err(|e| anyhow::anyhow!("{}: not an X.509 certificate: {e}", crt.display()))?;
    let serial = old.raw_serial_as_string();
    if super::revoke::read_revoked(&dir)?
        .entries
        .iter()
        .any(|e| e.serial == serial)
    {
        bail!(
            "{} is revoked; a renewal would undo that; issue a new identity with `mqttkit pki issue NEW-NAME`",
            crt.display()
        );
    }
    let params = params_like(&old, &args.name, args.days)?;
    let mut no_passphrase = || Err(super::keys::KeyError::NoPassphrase);
    let (old_key, _) = PrivateKey::read(&key_path, &mut no_passphrase)?;
    if old_key.public != old.public_key().subject_public_key.data.as_ref() {
        bail!(
            "{} does not belong to {}; renew with --new-key, or put the right key back",
            key_path.display(),
            crt.display()
        );
    }
    let key = if args.new_key {
        let Some(kt) = KeyType::of(old_key.alg) else {
            bail!(
                "{}: a {} key; --new-key makes only the --key-type kinds; renew without --new-key",
                key_path.display(),
                old_key.alg.label()
            );
        };
        kt.generate()?
    } else {
        old_key.key_pair()?
    };
    let issued = sign_with(params, key, &issuer)?;
    let mut staged = StagedFiles::new();
    if args.new_key {
        let der_key = dir.join(format!("{}_pkcs8.key", args.name));
        stage_identity(
            &mut staged,
            &dir,
            &args.name,
            &issued,
            der_key.exists() || args.name != "broker",
        );
    } else {
        staged.add(&crt, issued.cert_pem.clone(), crate::fsutil::MODE_PUBLIC);
    }
    let written = staged.commit(true)?;
    report_written(&written, args.json, |s| {
        s.push_str(&format!(
            "renewed '{}' for {} days ({})\n",
            args.name,
            args.days,
            if args.new_key { "new key" } else { "same key" }
        ))
    })
}

/// The parameters of a certificate like `old`: its subject attributes, CN,
/// names and extended key usage, with a new serial and validity.
fn params_like(old: &X509Certificate<'_>, name: &str, days: u32) -> Result<CertificateParams> {
    let subject = Subject::of_cert(old);
    let cn = crate::identity::common_name(old).unwrap_or_else(|| name.to_string());
    let server = matches!(old.extended_key_usage(), Ok(Some(e)) if e.value.server_auth);
    let mut params = if server {
        server_params_for(&subject, &cn, &[], days)
    } else {
        client_params_for(&subject, &cn, days)
    };
    if let Ok(Some(eku)) = old.extended_key_usage() {
        if eku.value.server_auth && eku.value.client_auth {
            params.insert_extended_key_usage(ExtendedKeyUsagePurpose::ClientAuth);
        }
    }
    if let Ok(Some(san)) = old.subject_alternative_name() {
        for n in &san.value.general_names {
            let host = match n {
                GeneralName::DNSName(d) => HostName::parse(d)?,
                GeneralName::IPAddress(b) => match ip(b) {
                    Some(ip) => HostName::Ip(ip),
                    None => continue,
                },
                _ => continue,
            };
            params.subject_alt_names.push(host.to_san());
        }
    }
    validity(&mut params, days);
    Ok(params)
}

fn ip(b: &[u8]) -> Option<IpAddr> {
    match b.len() {
        4 => Some(IpAddr::from(<[u8; 4]>::try_from(b).ok()?)),
        16 => Some(IpAddr::from(<[u8; 16]>::try_from(b).ok()?)),
        _ => None,
    }
}

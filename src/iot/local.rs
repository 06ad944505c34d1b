//! `create-thing --ca local`: the device certificate comes from the local CA
//! (`OUT/certs/NAME.crt`, reused if it exists, else issued by pki), so the
//! same files work on mosquitto (`--profile local`) and AWS IoT; the key
//! never leaves the machine.
//!
//! With a CA recorded by `register-ca`, RegisterCertificate with the CA's
//! PEM links the device to it (AWS registers it in the CA's mode, SNI_ONLY or
//! DEFAULT), which `deregister-ca` checks. Without one, the certificate is
//! registered with RegisterCertificateWithoutCA (multi-account style; the
//! device must send SNI, as mqttkit does).

use std::path::Path;

use anyhow::{bail, Result};
use aws_sdk_iot::types::CertificateStatus;

use super::ca::{local_ca, read_record};
use super::{sdk_error, Aws};
use crate::pki::{Issued, KeyType, DEFAULT_DAYS};

/// A registered, ACTIVE certificate: ARN, id, and the local identity.
pub(super) struct Registered {
    pub arn: String,
    pub id: String,
    pub issued: Issued,
}

pub(super) async fn register(
    aws: &Aws,
    out: &Path,
    name: &str,
    key_type: KeyType,
) -> Result<Registered> {
    let (ca_pem, ca_fp) = local_ca(out)?;
    let record = read_record(out)?;
    if let Some(r) = &record {
        if r.fingerprint_sha256 != ca_fp {
            bail!("{}: the registered CA is not OUT/certs/ca.crt any more; run `mqttkit iot deregister-ca` and `iot register-ca` again", super::ca::record_path(out).display());
        }
    }
    let (issued, new) = crate::pki::client_identity(out, name, key_type, DEFAULT_DAYS)?;
    let (crt, _) = crate::identity::files(&crate::pki::certs_dir(out), name);
    if new {
        crate::note!("issued {} from the local CA", crt.display());
    } else {
        crate::note!("reusing {}", crt.display());
    }
    super::keys::check_cert_matches(&issued.cert_pem, &issued.key)?;
    let ca_der = crate::identity::read_cert_der(&crate::pki::certs_dir(out).join("ca.crt"))?;
    if !crate::pki::inspect::inspect_der(&crt, &issued.cert_der, Some(&ca_der))?.chains_to_ca {
        bail!(
            "{}: not signed by the local CA (OUT/certs/ca.crt); reissue it with `mqttkit pki issue {name} --force`",
            crt.display()
        );
    }
    let ca_pem = record.is_some().then_some(ca_pem.as_str());
    let (arn, id) = send(aws, &issued.cert_pem, ca_pem).await?;
    match (arn, id) {
        (Some(arn), Some(id)) => Ok(Registered { arn, id, issued }),
        _ => bail!(
            "AWS IoT returned no certificate ARN or id for {}",
            crt.display()
        ),
    }
}

/// RegisterCertificate with the CA's PEM, or RegisterCertificateWithoutCA
/// when no CA is registered; ACTIVE. Returns the ARN and id AWS gave.
async fn send(
    aws: &Aws,
    pem: &str,
    ca_pem: Option<&str>,
) -> Result<(Option<String>, Option<String>)> {
    let Some(ca_pem) = ca_pem else {
        crate::note!("no CA registered (`mqttkit iot register-ca`); registering the certificate without a CA (devices must send SNI)");
        let r = aws
            .iot
            .register_certificate_without_ca()
            .certificate_pem(pem)
            .status(CertificateStatus::Active)
            .send()
            .await
            .map_err(|e| sdk_error("iot:RegisterCertificateWithoutCA", e))?;
        return Ok((
            r.certificate_arn().map(String::from),
            r.certificate_id().map(String::from),
        ));
    };
    let r = aws
        .iot
        .register_certificate()
        .certificate_pem(pem)
        .ca_certificate_pem(ca_pem)
        .status(CertificateStatus::Active)
        .send()
        .await
        .map_err(|e| sdk_error("iot:RegisterCertificate", e))?;
    Ok((
        r.certificate_arn().map(String::from),
        r.certificate_id().map(String::from),
    ))
}

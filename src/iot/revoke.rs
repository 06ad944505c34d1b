//! `mqttkit iot revoke-sync`: marks REVOKED in AWS IoT every certificate
//! registered from the local CA that `pki revoke` revoked here, so a leaked
//! device key is cut off on mosquitto (the CRL) and AWS IoT alike. A step in
//! `iot`, not in `pki`, because pki must not depend on iot (tests/architecture.rs).
//!
//! Matching is by serial number: the certificates AWS holds for the CA are
//! read back (DescribeCertificate) and compared with `OUT/certs/revoked.json`.
//! Certificates registered without a CA are not covered.

use std::collections::HashMap;

use anyhow::{bail, Result};
use aws_sdk_iot::types::CertificateStatus;
use serde::Serialize;

use super::ca::{list_by_ca, read_record, record_path};
use super::{sdk_error, Aws, RevokeSyncArgs};
use crate::output;

#[derive(Debug, Serialize)]
struct Row {
    name: String,
    certificate_id: String,
    /// The status before this run; REVOKED after it.
    was: String,
}

pub(super) async fn revoke_sync(args: RevokeSyncArgs) -> Result<()> {
    let Some(rec) = read_record(&args.out)? else {
        bail!(
            "{}: no registered CA recorded; run `mqttkit iot register-ca` first",
            record_path(&args.out).display()
        );
    };
    let revoked = crate::pki::revoke::read_revoked(&crate::pki::certs_dir(&args.out))?;
    let by_serial: HashMap<&str, &str> = revoked
        .entries
        .iter()
        .map(|e| (e.serial.as_str(), e.name.as_str()))
        .collect();
    let aws = Aws::connect(&args.aws).await?;
    let mut rows = Vec::new();
    for (id, _) in list_by_ca(&aws, &rec.certificate_id).await? {
        let (serial, status) = serial_and_status(&aws, &id).await?;
        let Some(name) = by_serial.get(serial.as_str()) else {
            continue;
        };
        if status != CertificateStatus::Revoked {
            aws.iot
                .update_certificate()
                .certificate_id(&id)
                .new_status(CertificateStatus::Revoked)
                .send()
                .await
                .map_err(|e| sdk_error("iot:UpdateCertificate", e))?;
            crate::note!("certificate {id} ({name}) marked REVOKED in {}", aws.region);
        }
        rows.push(Row {
            name: name.to_string(),
            certificate_id: id,
            was: status.as_str().to_string(),
        });
    }
    if args.json {
        return output::print_json(&rows);
    }
    let mut text = String::new();
    for r in &rows {
        text.push_str(&format!(
            "{}\t{}\tREVOKED (was {})\n",
            r.name, r.certificate_id, r.was
        ));
    }
    output::print_stdout(&text)
}

/// A registered certificate's serial (as `pki revoke` records it) and status.
async fn serial_and_status(aws: &Aws, id: &str) -> Result<(String, CertificateStatus)> {
    let d = aws
        .iot
        .describe_certificate()
        .certificate_id(id)
        .send()
        .await
        .map_err(|e| sdk_error("iot:DescribeCertificate", e))?;
    let desc = d.certificate_description();
    let pem = desc.and_then(|c| c.certificate_pem()).unwrap_or_default();
    let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .map_err(|e| anyhow::anyhow!("iot:DescribeCertificate {id}: no PEM certificate: {e}"))?;
    let cert = p
        .parse_x509()
        .map_err(|e| anyhow::anyhow!("iot:DescribeCertificate {id}: {e}"))?;
    let status = desc
        .and_then(|c| c.status())
        .cloned()
        .unwrap_or(CertificateStatus::Inactive);
    Ok((cert.raw_serial_as_string(), status))
}

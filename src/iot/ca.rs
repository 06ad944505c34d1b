//! `mqttkit iot register-ca` / `deregister-ca`: the local CA (`OUT/certs/ca.crt`)
//! registered with AWS IoT, so a device certificate it signs works on
//! mosquitto and AWS IoT alike (`create-thing --ca local`).
//!
//! SNI_ONLY (multi-account) mode needs no proof of the CA key; DEFAULT mode
//! proves it with a verification certificate whose CN is the account's
//! registration code, signed by the CA here (the CA key never leaves the
//! machine). The registration is recorded in `OUT/iot/ca.json`, which makes
//! a second run a no-op and tells `create-thing --ca local` what to use.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use aws_sdk_iot::operation::register_ca_certificate::RegisterCACertificateError;
use aws_sdk_iot::types::{CaCertificateStatus, CertificateMode};
use serde::{Deserialize, Serialize};
use sha2::Digest;

use super::{sdk_error, Aws, CaMode, DeregisterCaArgs, RegisterCaArgs};
use crate::fsutil::MODE_PUBLIC;
use crate::output;

/// What `OUT/iot/ca.json` records about the registered CA.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct CaRecord {
    pub certificate_id: String,
    pub certificate_arn: String,
    pub mode: CaMode,
    /// SHA-256 of the CA certificate's DER, hex.
    pub fingerprint_sha256: String,
    pub region: String,
}

pub(crate) fn record_path(out: &Path) -> PathBuf {
    out.join("iot").join("ca.json")
}

/// The recorded registration, if any.
pub(crate) fn read_record(out: &Path) -> Result<Option<CaRecord>> {
    let path = record_path(out);
    match std::fs::read(&path) {
        Ok(data) => serde_json::from_slice(&data).map(Some).map_err(|e| {
            anyhow::anyhow!(
                "{}: {e}; remove it and run `mqttkit iot register-ca` again",
                path.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(anyhow::anyhow!("{}: {e}", path.display())),
    }
}

/// SHA-256 of a certificate's DER, lower-case hex.
pub(crate) fn fingerprint_der(der: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(der))
}

/// The fingerprint of a PEM certificate (as AWS returns it).
fn fingerprint_pem(pem: &str) -> Result<String> {
    let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .map_err(|e| anyhow::anyhow!("AWS returned a CA certificate that is not PEM: {e}"))?;
    Ok(fingerprint_der(&p.contents))
}

/// The local CA certificate: its PEM and fingerprint.
pub(crate) fn local_ca(out: &Path) -> Result<(String, String)> {
    let path = crate::pki::certs_dir(out).join("ca.crt");
    if !path.exists() {
        bail!(
            "no CA at {}; create one with `mqttkit pki init --out {}` (or `pki import-ca`)",
            path.display(),
            out.display()
        );
    }
    let pem =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let der = crate::identity::read_cert_der(&path)?;
    Ok((pem, fingerprint_der(&der)))
}

#[derive(Debug, Serialize)]
struct Registered {
    registered: bool,
    #[serde(flatten)]
    ca: CaRecord,
}

pub(super) async fn register_ca(args: RegisterCaArgs) -> Result<()> {
    let (pem, fingerprint) = local_ca(&args.out)?;
    let aws = Aws::connect(&args.aws).await?;
    if let Some(rec) = already_registered(&aws, &args.out, &fingerprint).await? {
        crate::note!(
            "CA {} is already registered in {} ({} mode); nothing done",
            rec.certificate_id,
            rec.region,
            mode_of(rec.mode).as_str()
        );
        let ca = rec;
        return report(
            args.json,
            Registered {
                registered: false,
                ca,
            },
        );
    }
    if !args.yes && output::stdin_is_tty() && output::stderr_is_tty() {
        let prompt = format!(
            "Register {} (SHA-256 {fingerprint}) with AWS IoT in {}, {} mode?",
            crate::pki::certs_dir(&args.out).join("ca.crt").display(),
            aws.region,
            mode_of(args.mode).as_str()
        );
        super::create::ask(prompt, "nothing was registered")?;
    }
    let (id, arn) = register(&aws, &args, &pem).await?;
    let rec = CaRecord {
        certificate_id: id,
        certificate_arn: arn,
        mode: args.mode,
        fingerprint_sha256: fingerprint,
        region: aws.region.clone(),
    };
    let path = record_path(&args.out);
    crate::fsutil::write_atomic(&path, &serde_json::to_vec_pretty(&rec)?, MODE_PUBLIC)?;
    crate::note!(
        "registered CA {} ({} mode, ACTIVE, auto-registration off); recorded in {}",
        rec.certificate_id,
        mode_of(rec.mode).as_str(),
        path.display()
    );
    report(
        args.json,
        Registered {
            registered: true,
            ca: rec,
        },
    )
}

/// The recorded registration when AWS still holds that CA with the local
/// CA's fingerprint; an error when the record is of another CA.
async fn already_registered(aws: &Aws, out: &Path, fingerprint: &str) -> Result<Option<CaRecord>> {
    let Some(rec) = read_record(out)? else {
        return Ok(None);
    };
    if rec.fingerprint_sha256 != fingerprint {
        bail!(
            "{}: records CA {}, not {}; run `mqttkit iot deregister-ca` first",
            record_path(out).display(),
            rec.certificate_id,
            crate::pki::certs_dir(out).join("ca.crt").display()
        );
    }
    if let Some(live) = describe_ca(aws, &rec.certificate_id).await? {
        if fingerprint_pem(&live)? == fingerprint {
            return Ok(Some(rec));
        }
    }
    crate::note!(
        "CA {} is recorded but not in AWS ({}); registering again",
        rec.certificate_id,
        aws.region
    );
    Ok(None)
}

fn mode_of(mode: CaMode) -> CertificateMode {
    match mode {
        CaMode::SniOnly => CertificateMode::SniOnly,
        CaMode::Default => CertificateMode::Default,
    }
}

/// RegisterCACertificate, ACTIVE, auto-registration off; DEFAULT mode with a
/// verification certificate for the account's registration code. A CA AWS
/// already holds is adopted (its id is in the typed error).
async fn register(aws: &Aws, args: &RegisterCaArgs, pem: &str) -> Result<(String, String)> {
    let mut req = aws
        .iot
        .register_ca_certificate()
        .ca_certificate(pem)
        .set_as_active(true)
        .allow_auto_registration(false)
        .certificate_mode(mode_of(args.mode));
    if args.mode == CaMode::Default {
        req = req.verification_certificate(verification_certificate(aws, &args.out).await?);
    }
    match req.send().await {
        Ok(r) => match (r.certificate_id(), r.certificate_arn()) {
            (Some(id), Some(arn)) => Ok((id.to_string(), arn.to_string())),
            _ => bail!("iot:RegisterCACertificate returned no certificate id or ARN"),
        },
        Err(e) => match e.as_service_error() {
            Some(RegisterCACertificateError::ResourceAlreadyExistsException(x)) => {
                let id = x.resource_id().context("iot:RegisterCACertificate: the CA exists but AWS did not say its id; see `aws iot list-ca-certificates`")?;
                crate::note!("AWS already holds this CA as {id}; recording it");
                Ok((
                    id.to_string(),
                    x.resource_arn().unwrap_or_default().to_string(),
                ))
            }
            _ => Err(sdk_error("iot:RegisterCACertificate", e)),
        },
    }
}

/// A certificate with CN = the registration code, signed by the local CA.
async fn verification_certificate(aws: &Aws, out: &Path) -> Result<String> {
    let code = aws
        .iot
        .get_registration_code()
        .send()
        .await
        .map_err(|e| sdk_error("iot:GetRegistrationCode", e))?
        .registration_code()
        .context("iot:GetRegistrationCode returned no code")?
        .to_string();
    verification_pem(out, &code)
}

/// A one-day certificate for CN = `code` (a throw-away key), signed by the
/// local CA: AWS's proof that the registrant holds the CA key.
fn verification_pem(out: &Path, code: &str) -> Result<String> {
    let issuer = crate::pki::load_issuer(&crate::pki::certs_dir(out))?;
    let params = crate::pki::client_params(code, 1);
    let issued = crate::pki::profile::sign(params, crate::pki::KeyType::EcdsaP256, &issuer)?;
    Ok(issued.cert_pem)
}

/// The PEM of a registered CA, or None if AWS has no such CA.
async fn describe_ca(aws: &Aws, id: &str) -> Result<Option<String>> {
    match aws
        .iot
        .describe_ca_certificate()
        .certificate_id(id)
        .send()
        .await
    {
        Ok(d) => Ok(d
            .certificate_description()
            .and_then(|c| c.certificate_pem())
            .map(String::from)),
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_resource_not_found_exception()) =>
        {
            Ok(None)
        }
        Err(e) => Err(sdk_error("iot:DescribeCACertificate", e)),
    }
}

fn report(json: bool, r: Registered) -> Result<()> {
    if json {
        return output::print_json(&r);
    }
    output::print_stdout(&format!(
        "ca\t{}\narn\t{}\nmode\t{}\nsha256\t{}\n",
        r.ca.certificate_id,
        r.ca.certificate_arn,
        mode_of(r.ca.mode).as_str(),
        r.ca.fingerprint_sha256
    ))
}

pub(super) async fn deregister_ca(args: DeregisterCaArgs) -> Result<()> {
    let path = record_path(&args.out);
    let Some(rec) = read_record(&args.out)? else {
        bail!("{}: no registered CA recorded; nothing to deregister (register one with `mqttkit iot register-ca`)", path.display());
    };
    let aws = Aws::connect(&args.aws).await?;
    let id = &rec.certificate_id;
    let used = certificates_by_ca(&aws, id).await?;
    if !used.is_empty() {
        bail!(
            "CA {id} still has {} registered certificate(s): {}; delete their things first (`mqttkit iot delete-thing NAME --yes`)",
            used.len(),
            used.join(", ")
        );
    }
    if !args.yes {
        if !(output::stdin_is_tty() && output::stderr_is_tty()) {
            bail!("iot deregister-ca: not a terminal, so no confirmation can be asked; pass --yes to deregister");
        }
        super::create::ask(
            format!("Deactivate and delete CA {id} in {}?", aws.region),
            "nothing was changed",
        )?;
    }
    if describe_ca(&aws, id).await?.is_some() {
        aws.iot
            .update_ca_certificate()
            .certificate_id(id)
            .new_status(CaCertificateStatus::Inactive)
            .send()
            .await
            .map_err(|e| sdk_error("iot:UpdateCACertificate", e))?;
        aws.iot
            .delete_ca_certificate()
            .certificate_id(id)
            .send()
            .await
            .map_err(|e| sdk_error("iot:DeleteCACertificate", e))?;
        crate::note!("deregistered CA {id}");
    } else {
        crate::note!("CA {id} is not in AWS any more; forgetting it");
    }
    std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
    Ok(())
}

/// The certificates registered from CA `id`, each as "ID (thing T)".
async fn certificates_by_ca(aws: &Aws, id: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for (cid, arn) in list_by_ca(aws, id).await? {
        let things = aws
            .iot
            .list_principal_things()
            .principal(&arn)
            .send()
            .await
            .map_err(|e| sdk_error("iot:ListPrincipalThings", e))?;
        out.push(match things.things() {
            [] => cid,
            t => format!("{cid} (thing {})", t.join(", ")),
        });
    }
    Ok(out)
}

/// (id, ARN) of each certificate registered from CA `id`.
pub(super) async fn list_by_ca(aws: &Aws, id: &str) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut marker = None;
    loop {
        let page = aws
            .iot
            .list_certificates_by_ca()
            .ca_certificate_id(id)
            .set_marker(marker)
            .send()
            .await
            .map_err(|e| sdk_error("iot:ListCertificatesByCA", e))?;
        out.extend(page.certificates().iter().filter_map(|c| {
            Some((
                c.certificate_id()?.to_string(),
                c.certificate_arn()?.to_string(),
            ))
        }));
        marker = page.next_marker().map(String::from);
        if marker.is_none() {
            return Ok(out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verification_certificate_names_the_code_and_chains_to_the_ca() {
        let tmp = tempfile::tempdir().unwrap();
        let mut init = crate::pki::InitConfig::new(tmp.path());
        init.json = true;
        crate::pki::init(&init).unwrap();
        let code = "0f8c1e2d3b4a5968778695a4b3c2d1e0f9e8d7c6b5a4938271605f4e3d2c1b0a";
        let pem = verification_pem(tmp.path(), code).unwrap();
        let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
        let cert = p.parse_x509().unwrap();
        assert_eq!(crate::identity::common_name(&cert).as_deref(), Some(code));
        let ca = crate::identity::read_cert_der(&tmp.path().join("certs/ca.crt")).unwrap();
        let info =
            crate::pki::inspect::inspect_der(Path::new("v.crt"), &p.contents, Some(&ca)).unwrap();
        assert!(info.chains_to_ca);
        let (ca_pem, fp) = local_ca(tmp.path()).unwrap();
        assert_eq!(fingerprint_pem(&ca_pem).unwrap(), fp);
        assert_eq!(fp.len(), 64);
    }
}

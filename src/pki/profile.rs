//! What goes into the certificates mqttkit issues: subject, validity,
//! random serials, key usage by key type (RFC 5480 §3 and RFC 8410 §5 forbid
//! keyEncipherment for EC and Ed25519 keys), a Subject Key Identifier on
//! every certificate and an Authority Key Identifier on every issued one
//! (RFC 5280 §4.2.1.1-2).

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SerialNumber,
};
use time::{Duration, OffsetDateTime};

use super::names::HostName;
use super::subject::Subject;
use super::KeyType;

/// A certificate and its key, ready to be written.
pub struct Issued {
    pub cert_pem: String,
    pub cert_der: Vec<u8>,
    pub key: KeyPair,
}

pub fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f; // positive, per RFC 5280
    bytes[0] |= 0x01; // never a leading zero byte
    SerialNumber::from_slice(&bytes)
}

pub fn validity(params: &mut CertificateParams, days: u32) {
    let now = OffsetDateTime::now_utc();
    // A little slack for peers whose clocks run behind.
    params.not_before = now - Duration::minutes(5);
    params.not_after = now + Duration::days(i64::from(days));
}

/// The CA's CN: "<O> Root CA", or "mqttkit Root CA" without an organization.
pub fn ca_common_name(subject: &Subject) -> String {
    format!("{} Root CA", subject.org().unwrap_or("mqttkit"))
}

pub fn ca_params(days: u32) -> CertificateParams {
    ca_params_for(&Subject::default(), days)
}

pub fn ca_params_for(subject: &Subject, days: u32) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = subject.with_cn(&ca_common_name(subject));
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.serial_number = Some(random_serial());
    params.use_authority_key_identifier_extension = false;
    validity(&mut params, days);
    params
}

/// An end-entity certificate for `cn` with one extended key usage.
/// keyUsage is digitalSignature; [`sign`] adds keyEncipherment for RSA keys.
fn leaf_params(
    subject: &Subject,
    cn: &str,
    usage: ExtendedKeyUsagePurpose,
    days: u32,
) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = subject.with_cn(cn);
    // basicConstraints CA:FALSE; with it rcgen writes the Subject Key Identifier.
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![usage];
    params.serial_number = Some(random_serial());
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, days);
    params
}

pub fn server_params_for(
    subject: &Subject,
    cn: &str,
    hosts: &[HostName],
    days: u32,
) -> CertificateParams {
    let mut params = leaf_params(subject, cn, ExtendedKeyUsagePurpose::ServerAuth, days);
    params.subject_alt_names = hosts.iter().map(HostName::to_san).collect();
    params
}

pub fn server_params(cn: &str, hosts: &[HostName], days: u32) -> CertificateParams {
    server_params_for(&Subject::default(), cn, hosts, days)
}

pub fn client_params_for(subject: &Subject, name: &str, days: u32) -> CertificateParams {
    leaf_params(subject, name, ExtendedKeyUsagePurpose::ClientAuth, days)
}

pub fn client_params(name: &str, days: u32) -> CertificateParams {
    client_params_for(&Subject::default(), name, days)
}

/// The key usages for a leaf with `key`: RSA keys may also encipher.
fn usages_for_key(params: &mut CertificateParams, key: &KeyPair) {
    let rsa = key.algorithm() == &rcgen::PKCS_RSA_SHA256
        || key.algorithm() == &rcgen::PKCS_RSA_SHA384
        || key.algorithm() == &rcgen::PKCS_RSA_SHA512;
    if rsa {
        if !params
            .key_usages
            .contains(&KeyUsagePurpose::KeyEncipherment)
        {
            params.key_usages.push(KeyUsagePurpose::KeyEncipherment);
        }
    } else {
        params
            .key_usages
            .retain(|u| *u != KeyUsagePurpose::KeyEncipherment);
    }
}

/// Signs leaf `params` for `key`, with the key usages its type allows.
pub fn sign_with(
    mut params: CertificateParams,
    key: KeyPair,
    issuer: &Issuer<'_, KeyPair>,
) -> Result<Issued> {
    usages_for_key(&mut params, &key);
    let cert = params
        .signed_by(&key, issuer)
        .context("signing certificate")?;
    Ok(Issued {
        cert_pem: cert.pem(),
        cert_der: cert.der().to_vec(),
        key,
    })
}

pub fn sign(
    params: CertificateParams,
    key_type: KeyType,
    issuer: &Issuer<'_, KeyPair>,
) -> Result<Issued> {
    sign_with(params, key_type.generate()?, issuer)
}

//! Keys and certificates coming back from AWS IoT: the safety check that a
//! certificate carries our public key, and PKCS#1 -> PKCS#8 for AWS-made keys.

use rcgen::KeyPair;
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("the certificate AWS IoT returned is not valid PEM: {0}")]
    BadCertificate(String),
    #[error("the certificate AWS IoT returned does not carry the public key of the private key mqttkit holds; refusing to use it (the endpoint signed some other key)")]
    NotOurKey,
    #[error("the private key AWS IoT returned is not a usable PEM key: {0}")]
    BadKey(String),
}

/// The raw subject public key of a PEM certificate.
pub fn cert_public_key(cert_pem: &str) -> Result<Vec<u8>, KeyError> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes())
        .map_err(|e| KeyError::BadCertificate(e.to_string()))?;
    let cert = pem
        .parse_x509()
        .map_err(|e| KeyError::BadCertificate(e.to_string()))?;
    Ok(cert.public_key().subject_public_key.data.to_vec())
}

/// Fails unless `cert_pem` certifies `key`'s public key.
pub fn check_cert_matches(cert_pem: &str, key: &KeyPair) -> Result<(), KeyError> {
    if cert_public_key(cert_pem)? == key.public_key_raw() {
        Ok(())
    } else {
        Err(KeyError::NotOurKey)
    }
}

fn der_tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(content);
    out
}

/// Wraps a PKCS#1 RSAPrivateKey in a PKCS#8 PrivateKeyInfo (RFC 5208).
pub fn pkcs1_to_pkcs8(pkcs1: &[u8]) -> Vec<u8> {
    // AlgorithmIdentifier { rsaEncryption (1.2.840.113549.1.1.1), NULL }
    const RSA_ALG_ID: &[u8] = &[
        0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
    ];
    let mut body = vec![0x02, 0x01, 0x00]; // version 0
    body.extend_from_slice(RSA_ALG_ID);
    body.extend(der_tlv(0x04, pkcs1));
    der_tlv(0x30, &body)
}

/// A PEM private key as AWS returns it (PKCS#1 "RSA PRIVATE KEY", or PKCS#8)
/// turned into a PKCS#8 key pair, checked to still be the same key.
pub fn pkcs8_from_aws_pem(pem: &str) -> Result<KeyPair, KeyError> {
    use rustls_pki_types::pem::PemObject;
    let der = PrivateKeyDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| KeyError::BadKey(e.to_string()))?;
    let original = KeyPair::try_from(&der).map_err(|e| KeyError::BadKey(e.to_string()))?;
    let pkcs8 = match &der {
        PrivateKeyDer::Pkcs1(k) => pkcs1_to_pkcs8(k.secret_pkcs1_der()),
        PrivateKeyDer::Pkcs8(k) => k.secret_pkcs8_der().to_vec(),
        _ => return Err(KeyError::BadKey("not an RSA (PKCS#1) or PKCS#8 key".into())),
    };
    let converted = KeyPair::try_from(&PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pkcs8)))
        .map_err(|e| KeyError::BadKey(format!("PKCS#8 conversion: {e}")))?;
    if converted.public_key_raw() != original.public_key_raw() {
        return Err(KeyError::BadKey("PKCS#8 conversion changed the key".into()));
    }
    Ok(converted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_lengths() {
        assert_eq!(der_tlv(0x04, &[1, 2]), vec![0x04, 2, 1, 2]);
        let long = der_tlv(0x04, &[0u8; 300]);
        assert_eq!(&long[..4], &[0x04, 0x82, 0x01, 0x2c]);
    }

    #[test]
    fn mismatched_certificate_is_refused() {
        let ours = KeyPair::generate().unwrap();
        let other = KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["x".into()]).unwrap();
        let cert = params.self_signed(&other).unwrap().pem();
        assert!(matches!(
            check_cert_matches(&cert, &ours),
            Err(KeyError::NotOurKey)
        ));
        check_cert_matches(&cert, &other).unwrap();
    }

    #[test]
    fn pkcs8_passthrough() {
        let k = KeyPair::generate().unwrap();
        let back = pkcs8_from_aws_pem(&k.serialize_pem()).unwrap();
        assert_eq!(back.public_key_raw(), k.public_key_raw());
        // A junk PEM is a clear error, not a panic.
        assert!(pkcs8_from_aws_pem("nope").is_err());
    }
}

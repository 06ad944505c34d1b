//! Private keys in the forms other stacks read.
//!
//! Every key mqttkit writes is PKCS#8 v1 (RFC 5208: no public key inside).
//! aws-lc writes Ed25519 keys as PKCS#8 v2 (RFC 5958), which OpenSSL 3.0
//! (so mosquitto and Python's `ssl`) and Python `cryptography` refuse
//! ("DECODER routines::unsupported"); v1 is what every stack reads.
//! Keys are read in any plain form (PKCS#8 v1/v2, PKCS#1 RSA, SEC1 EC; PEM
//! or DER) and in encrypted PKCS#8 (PBES2), for `pki import-ca`.

use std::path::Path;

use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der};
use aws_lc_rs::signature::{
    EcdsaKeyPair, Ed25519KeyPair, KeyPair as _, RsaKeyPair, ECDSA_P256_SHA256_ASN1_SIGNING,
    ECDSA_P384_SHA384_ASN1_SIGNING, ECDSA_P521_SHA512_ASN1_SIGNING,
};
use pkcs8::der::Decode;
use serde::Serialize;

/// The algorithm of a private key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum KeyAlg {
    Rsa(usize),
    EcP256,
    EcP384,
    EcP521,
    Ed25519,
}

impl KeyAlg {
    pub fn label(self) -> String {
        match self {
            KeyAlg::Rsa(bits) => format!("RSA {bits}"),
            KeyAlg::EcP256 => "ECDSA P-256".into(),
            KeyAlg::EcP384 => "ECDSA P-384".into(),
            KeyAlg::EcP521 => "ECDSA P-521".into(),
            KeyAlg::Ed25519 => "Ed25519".into(),
        }
    }

    pub fn is_rsa(self) -> bool {
        matches!(self, KeyAlg::Rsa(_))
    }
}

/// How a key file was encoded, as `pki inspect` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum KeyForm {
    #[serde(rename = "PKCS#8")]
    Pkcs8,
    #[serde(rename = "PKCS#1")]
    Pkcs1,
    #[serde(rename = "SEC1")]
    Sec1,
    #[serde(rename = "encrypted PKCS#8")]
    EncryptedPkcs8,
}

impl KeyForm {
    pub fn label(self) -> &'static str {
        match self {
            KeyForm::Pkcs8 => "PKCS#8",
            KeyForm::Pkcs1 => "PKCS#1",
            KeyForm::Sec1 => "SEC1",
            KeyForm::EncryptedPkcs8 => "encrypted PKCS#8",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("not a private key mqttkit can read (PKCS#8, PKCS#1 RSA or SEC1 EC; PEM or DER; encrypted only as PKCS#8); convert it with `openssl pkcs8 -topk8`")]
    Unreadable,
    #[error("a legacy OpenSSL-encrypted PEM key (Proc-Type header); convert it with `openssl pkcs8 -topk8 -v2 aes-256-cbc`")]
    LegacyEncrypted,
    #[error("the key is encrypted: wrong passphrase, or an encryption other than PBES2 (AES, PBKDF2/scrypt); check MQTTKIT_CA_PASSPHRASE")]
    Decrypt,
    #[error("the key is encrypted and no passphrase was given; set MQTTKIT_CA_PASSPHRASE or run on a terminal to be asked")]
    NoPassphrase,
}

/// A plain private key as PKCS#8 v1 DER.
pub struct PrivateKey {
    pub pkcs8: Vec<u8>,
    pub alg: KeyAlg,
    /// The public key as in a certificate's subjectPublicKey BIT STRING.
    pub public: Vec<u8>,
}

impl PrivateKey {
    /// Parses an unencrypted DER key in any form aws-lc reads.
    pub fn from_der(der: &[u8]) -> Result<Self, KeyError> {
        if let Ok(k) = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der) {
            let v1 = k.to_pkcs8v1().map_err(|_| KeyError::Unreadable)?;
            return Ok(Self::new(
                v1.as_ref(),
                KeyAlg::Ed25519,
                k.public_key().as_ref(),
            ));
        }
        let curves = [
            (&ECDSA_P256_SHA256_ASN1_SIGNING, KeyAlg::EcP256),
            (&ECDSA_P384_SHA384_ASN1_SIGNING, KeyAlg::EcP384),
            (&ECDSA_P521_SHA512_ASN1_SIGNING, KeyAlg::EcP521),
        ];
        for (curve, alg) in curves {
            if let Ok(k) = EcdsaKeyPair::from_private_key_der(curve, der) {
                let v1 = k.to_pkcs8v1().map_err(|_| KeyError::Unreadable)?;
                return Ok(Self::new(v1.as_ref(), alg, k.public_key().as_ref()));
            }
        }
        let rsa = RsaKeyPair::from_pkcs8(der).or_else(|_| RsaKeyPair::from_der(der));
        if let Ok(k) = rsa {
            let v1: Pkcs8V1Der<'static> = k.as_der().map_err(|_| KeyError::Unreadable)?;
            let bits = k.public_modulus_len() * 8;
            return Ok(Self::new(
                v1.as_ref(),
                KeyAlg::Rsa(bits),
                k.public_key().as_ref(),
            ));
        }
        Err(KeyError::Unreadable)
    }

    fn new(pkcs8: &[u8], alg: KeyAlg, public: &[u8]) -> Self {
        PrivateKey {
            pkcs8: pkcs8.to_vec(),
            alg,
            public: public.to_vec(),
        }
    }

    /// Parses a key file's bytes (PEM or DER, maybe encrypted PKCS#8);
    /// `passphrase` is asked only for an encrypted key.
    pub fn parse(
        data: &[u8],
        passphrase: &mut dyn FnMut() -> Result<String, KeyError>,
    ) -> Result<(Self, KeyForm), KeyError> {
        let (der, encrypted) = match pem_key_block(data)? {
            Some((label, der)) => (der, label == "ENCRYPTED PRIVATE KEY"),
            None => (data.to_vec(), is_encrypted_pkcs8(data)),
        };
        if encrypted {
            let info = pkcs8::EncryptedPrivateKeyInfoRef::from_der(&der)
                .map_err(|_| KeyError::Unreadable)?;
            let plain = info
                .decrypt(passphrase()?.as_bytes())
                .map_err(|_| KeyError::Decrypt)?;
            return Ok((Self::from_der(plain.as_bytes())?, KeyForm::EncryptedPkcs8));
        }
        let form = plain_form(&der);
        Ok((Self::from_der(&der)?, form))
    }

    /// Reads a key file, naming it in the error.
    pub fn read(
        path: &Path,
        passphrase: &mut dyn FnMut() -> Result<String, KeyError>,
    ) -> anyhow::Result<(Self, KeyForm)> {
        let data = std::fs::read(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        Self::parse(&data, passphrase).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    }

    pub fn to_pem(&self) -> String {
        pem_encode("PRIVATE KEY", &self.pkcs8)
    }

    /// Encrypted PKCS#8 PEM (PBES2: scrypt and AES-256-CBC, RustCrypto's
    /// recommended parameters; OpenSSL 3 reads it too).
    pub fn to_encrypted_pem(&self, passphrase: &str) -> anyhow::Result<String> {
        let info = pkcs8::PrivateKeyInfoRef::from_der(&self.pkcs8)
            .map_err(|e| anyhow::anyhow!("encoding the key: {e}"))?;
        let doc = info
            .encrypt(passphrase.as_bytes())
            .map_err(|e| anyhow::anyhow!("encrypting the key: {e}"))?;
        Ok(pem_encode("ENCRYPTED PRIVATE KEY", doc.as_bytes()))
    }

    /// The key for signing with rcgen.
    pub fn key_pair(&self) -> anyhow::Result<rcgen::KeyPair> {
        rcgen::KeyPair::try_from(self.pkcs8.as_slice())
            .map_err(|e| anyhow::anyhow!("{} key cannot sign certificates: {e}", self.alg.label()))
    }

    /// The traditional OpenSSL form: PKCS#1 for RSA, SEC1 for EC keys;
    /// `None` for Ed25519, which has none.
    pub fn traditional_pem(&self) -> Option<String> {
        let info = pkcs8::PrivateKeyInfoRef::from_der(&self.pkcs8).ok()?;
        let inner = info.private_key.as_bytes();
        match self.alg {
            KeyAlg::Rsa(_) => Some(pem_encode("RSA PRIVATE KEY", inner)),
            KeyAlg::Ed25519 => None,
            _ => {
                let ec =
                    EcdsaKeyPair::from_private_key_der(self.ec_signing()?, &self.pkcs8).ok()?;
                let sec1: aws_lc_rs::encoding::EcPrivateKeyRfc5915Der<'static> =
                    ec.private_key().as_der().ok()?;
                Some(pem_encode("EC PRIVATE KEY", sec1.as_ref()))
            }
        }
    }

    fn ec_signing(&self) -> Option<&'static aws_lc_rs::signature::EcdsaSigningAlgorithm> {
        match self.alg {
            KeyAlg::EcP256 => Some(&ECDSA_P256_SHA256_ASN1_SIGNING),
            KeyAlg::EcP384 => Some(&ECDSA_P384_SHA384_ASN1_SIGNING),
            KeyAlg::EcP521 => Some(&ECDSA_P521_SHA512_ASN1_SIGNING),
            _ => None,
        }
    }
}

/// Rewrites a freshly generated rcgen key as PKCS#8 v1 (aws-lc's Ed25519
/// keys are v2), so `serialize_pem`/`serialize_der` give the v1 form.
pub fn normalize(key: rcgen::KeyPair) -> anyhow::Result<rcgen::KeyPair> {
    let k = PrivateKey::from_der(&key.serialize_der())?;
    k.key_pair()
}

pub fn pem_encode(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut s = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        s.push_str(std::str::from_utf8(chunk).expect("base64 is ASCII"));
        s.push('\n');
    }
    s.push_str(&format!("-----END {label}-----\n"));
    s
}

/// Every PEM block of `data` as (label, DER); empty when `data` is not PEM.
pub fn pem_blocks(data: &[u8]) -> Vec<(String, Vec<u8>, bool)> {
    let Ok(text) = std::str::from_utf8(data) else {
        return Vec::new();
    };
    let mut blocks = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("-----BEGIN ") {
        let block = &rest[start..];
        let Some(label_end) = block["-----BEGIN ".len()..].find("-----") else {
            break;
        };
        let label = &block["-----BEGIN ".len().."-----BEGIN ".len() + label_end];
        let end_marker = format!("-----END {label}-----");
        let Some(end) = block.find(&end_marker) else {
            break;
        };
        let whole = &block[..end + end_marker.len()];
        let has_headers = whole.contains("Proc-Type:");
        let der = pkcs8::der::pem::decode_vec(whole.as_bytes())
            .map(|(_, d)| d)
            .unwrap_or_default();
        blocks.push((label.to_string(), der, has_headers));
        rest = &block[end + end_marker.len()..];
    }
    blocks
}

const KEY_LABELS: &[&str] = &[
    "PRIVATE KEY",
    "RSA PRIVATE KEY",
    "EC PRIVATE KEY",
    "ENCRYPTED PRIVATE KEY",
];

/// The first private-key block of a PEM file; `None` when `data` is not PEM.
fn pem_key_block(data: &[u8]) -> Result<Option<(String, Vec<u8>)>, KeyError> {
    let blocks = pem_blocks(data);
    if blocks.is_empty() {
        return Ok(None);
    }
    let (label, der, headers) = blocks
        .into_iter()
        .find(|(l, _, _)| KEY_LABELS.contains(&l.as_str()))
        .ok_or(KeyError::Unreadable)?;
    if headers {
        return Err(KeyError::LegacyEncrypted);
    }
    if der.is_empty() {
        return Err(KeyError::Unreadable);
    }
    Ok(Some((label, der)))
}

/// Whether a key file's bytes (PEM or DER) are an encrypted PKCS#8 key,
/// i.e. reading it needs a passphrase.
pub fn is_encrypted(data: &[u8]) -> bool {
    match pem_key_block(data) {
        Ok(Some((label, _))) => label == "ENCRYPTED PRIVATE KEY",
        Ok(None) => is_encrypted_pkcs8(data),
        Err(_) => false,
    }
}

fn is_encrypted_pkcs8(der: &[u8]) -> bool {
    pkcs8::EncryptedPrivateKeyInfoRef::from_der(der).is_ok()
}

fn plain_form(der: &[u8]) -> KeyForm {
    if pkcs8::PrivateKeyInfoRef::from_der(der).is_ok() {
        KeyForm::Pkcs8
    } else if RsaKeyPair::from_der(der).is_ok() {
        KeyForm::Pkcs1
    } else {
        KeyForm::Sec1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_pass() -> Result<String, KeyError> {
        Err(KeyError::NoPassphrase)
    }

    #[test]
    fn ed25519_keys_are_written_as_pkcs8_v1() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let v2 = key.serialize_der();
        assert_eq!(v2[4], 1, "aws-lc writes v2 (version 1)");
        let v1 = normalize(key).unwrap().serialize_der();
        // SEQUENCE { INTEGER 0, ... }: 48 bytes, no public key.
        assert_eq!(&v1[..5], &[0x30, 0x2e, 0x02, 0x01, 0x00]);
        let (k, form) = PrivateKey::parse(&v1, &mut no_pass).unwrap();
        assert_eq!((k.alg, form), (KeyAlg::Ed25519, KeyForm::Pkcs8));
    }

    #[test]
    fn traditional_forms_round_trip() {
        for alg in [
            &rcgen::PKCS_ECDSA_P256_SHA256,
            &rcgen::PKCS_ECDSA_P384_SHA384,
        ] {
            let key = normalize(rcgen::KeyPair::generate_for(alg).unwrap()).unwrap();
            let k = PrivateKey::from_der(&key.serialize_der()).unwrap();
            let sec1 = k.traditional_pem().unwrap();
            assert!(sec1.starts_with("-----BEGIN EC PRIVATE KEY-----"));
            let (back, form) = PrivateKey::parse(sec1.as_bytes(), &mut no_pass).unwrap();
            assert_eq!(form, KeyForm::Sec1);
            assert_eq!(back.pkcs8, k.pkcs8);
        }
        let bad = PrivateKey::parse(
            b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            &mut no_pass,
        );
        assert!(matches!(bad, Err(KeyError::Unreadable)));
    }
}

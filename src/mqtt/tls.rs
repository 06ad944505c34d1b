//! rustls client configuration: the broker's CA, an optional client identity,
//! and errors that say which file is wrong before any connection is tried.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

/// ALPN protocol AWS IoT Core requires for MQTT over TLS on port 443.
pub const AWS_IOT_ALPN: &[u8] = b"x-amzn-mqtt-ca";

#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("--cafile {path}: {reason}")]
    CaFile { path: String, reason: String },
    #[error("--cert {path}: {reason}")]
    CertFile { path: String, reason: String },
    #[error("--key {path}: {reason}")]
    KeyFile { path: String, reason: String },
    #[error("--cert {cert} and --key {key} are not a pair: the key does not match the certificate's public key; pass the key that was created with this certificate")]
    Mismatch { cert: String, key: String },
    #[error("no --cafile and no CA certificate in the OS trust store ({0}); pass --cafile FILE with the CA that signs the broker's certificate")]
    NoSystemRoots(String),
    #[error("TLS configuration: {0}")]
    Rustls(String),
}

pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => "no such file".to_string(),
        std::io::ErrorKind::PermissionDenied => "permission denied".to_string(),
        _ => e.to_string(),
    })
}

pub fn load_roots(cafile: &Path) -> Result<RootCertStore, TlsSetupError> {
    let err = |reason: String| TlsSetupError::CaFile {
        path: cafile.display().to_string(),
        reason,
    };
    let data = read(cafile).map_err(err)?;
    let mut roots = RootCertStore::empty();
    let mut found = 0;
    for cert in CertificateDer::pem_slice_iter(&data) {
        let cert = cert.map_err(|e| err(format!("not a PEM certificate file ({e})")))?;
        roots
            .add(cert)
            .map_err(|e| err(format!("unusable CA certificate ({e})")))?;
        found += 1;
    }
    if found == 0 {
        return Err(err("contains no PEM certificate".into()));
    }
    Ok(roots)
}

/// The OS trust store (honours SSL_CERT_FILE/SSL_CERT_DIR): what a broker
/// with a public certificate, or one from a company CA installed
/// system-wide, chains to when no --cafile is given.
pub fn load_native_roots() -> Result<RootCertStore, TlsSetupError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(found.certs);
    if roots.is_empty() {
        let why = match found.errors.first() {
            Some(e) => e.to_string(),
            None => "it is empty".to_string(),
        };
        return Err(TlsSetupError::NoSystemRoots(why));
    }
    Ok(roots)
}

/// `--cafile`'s certificates, or the OS trust store without one.
pub fn roots_for(cafile: Option<&Path>) -> Result<RootCertStore, TlsSetupError> {
    match cafile {
        Some(path) => load_roots(path),
        None => load_native_roots(),
    }
}

/// [`load_roots`] for a CA file named by a URL parameter (`sslrootcert=`,
/// `cafile=`): the error names that parameter, not `--cafile`.
pub fn load_roots_for(param: &str, cafile: &Path) -> Result<RootCertStore, String> {
    load_roots(cafile).map_err(|e| match e {
        TlsSetupError::CaFile { path, reason } => format!("{param}={path}: {reason}"),
        other => other.to_string(),
    })
}

pub fn load_chain(cert: &Path) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let err = |reason: String| TlsSetupError::CertFile {
        path: cert.display().to_string(),
        reason,
    };
    let data = read(cert).map_err(err)?;
    let chain: Vec<_> = CertificateDer::pem_slice_iter(&data)
        .collect::<Result<_, _>>()
        .map_err(|e| err(format!("not a PEM certificate file ({e})")))?;
    if chain.is_empty() {
        return Err(err("contains no PEM certificate".into()));
    }
    Ok(chain)
}

pub fn load_key(key: &Path) -> Result<PrivateKeyDer<'static>, TlsSetupError> {
    let err = |reason: String| TlsSetupError::KeyFile {
        path: key.display().to_string(),
        reason,
    };
    let data = read(key).map_err(err)?;
    PrivateKeyDer::from_pem_slice(&data).or_else(|_| {
        // A DER PKCS#8 file (NAME_pkcs8.key) is accepted too.
        PrivateKeyDer::try_from(data.clone())
            .map(|k| k.clone_key())
            .map_err(|_| err("not a PEM or PKCS#8 DER private key".into()))
    })
}

/// Builds the client configuration. `identity` is (cert, key).
pub fn client_config(
    cafile: Option<&Path>,
    identity: Option<(&Path, &Path)>,
    alpn: Option<&[u8]>,
) -> Result<Arc<ClientConfig>, TlsSetupError> {
    let roots = roots_for(cafile)?;
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsSetupError::Rustls(e.to_string()))?
        .with_root_certificates(roots);
    let mut config = match identity {
        Some((cert, key)) => {
            let chain = load_chain(cert)?;
            let key_der = load_key(key)?;
            let signing = provider()
                .key_provider
                .load_private_key(key_der.clone_key())
                .map_err(|e| TlsSetupError::KeyFile {
                    path: key.display().to_string(),
                    reason: format!("unsupported private key ({e})"),
                })?;
            let certified = rustls::sign::CertifiedKey::new(chain.clone(), signing);
            if certified.keys_match().is_err() {
                return Err(TlsSetupError::Mismatch {
                    cert: cert.display().to_string(),
                    key: key.display().to_string(),
                });
            }
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| TlsSetupError::Rustls(e.to_string()))?
        }
        None => builder.with_no_client_auth(),
    };
    if let Some(alpn) = alpn {
        config.alpn_protocols = vec![alpn.to_vec()];
    }
    Ok(Arc::new(config))
}

/// The configuration an endpoint carries on a plain TCP connection, where
/// it is never used: empty roots, so nothing is read from disk.
pub fn plain_placeholder() -> Arc<ClientConfig> {
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("the default provider supports the default versions")
        .with_root_certificates(RootCertStore::empty())
        .with_no_client_auth();
    Arc::new(config)
}

/// A client configuration for an identity held in memory (e.g. the ephemeral
/// per-device certificates `bench` issues), sharing one parsed root store.
pub fn client_config_in_memory(
    roots: Arc<RootCertStore>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    alpn: Option<&[u8]>,
) -> Result<Arc<ClientConfig>, TlsSetupError> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsSetupError::Rustls(e.to_string()))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| TlsSetupError::Rustls(e.to_string()))?;
    if let Some(alpn) = alpn {
        config.alpn_protocols = vec![alpn.to_vec()];
    }
    Ok(Arc::new(config))
}

/// Verifies the server's chain as usual but against a fixed name instead of
/// the host dialled: for health checks of a broker listening on an address its
/// certificate does not carry (the mismatch is reported separately).
#[derive(Debug)]
struct FixedNameVerifier {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    name: rustls::pki_types::ServerName<'static>,
}

impl rustls::client::danger::ServerCertVerifier for FixedNameVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        ocsp: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, &self.name, ocsp, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Like [`client_config`], but the broker certificate must be valid for `name`
/// whatever host is dialled.
pub fn client_config_for_name(
    cafile: Option<&Path>,
    identity: (&Path, &Path),
    name: &str,
) -> Result<Arc<ClientConfig>, TlsSetupError> {
    let roots = Arc::new(roots_for(cafile)?);
    let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider())
        .build()
        .map_err(|e| TlsSetupError::Rustls(e.to_string()))?;
    let name = rustls::pki_types::ServerName::try_from(name.to_string())
        .map_err(|e| TlsSetupError::Rustls(e.to_string()))?;
    let chain = load_chain(identity.0)?;
    let key = load_key(identity.1)?;
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsSetupError::Rustls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(FixedNameVerifier { inner, name }))
        .with_client_auth_cert(chain, key)
        .map_err(|e| TlsSetupError::Rustls(e.to_string()))?;
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_flag_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.crt");
        let e = client_config(Some(&missing), None, None)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("--cafile") && e.contains("no such file"),
            "{e}"
        );
        let junk = dir.path().join("junk.crt");
        std::fs::write(&junk, "hello").unwrap();
        let e = client_config(Some(&junk), None, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("contains no PEM certificate"), "{e}");
    }
}

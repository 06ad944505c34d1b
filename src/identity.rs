//! Identities: the certificate CN that is also a file stem, an MQTT user
//! name (mosquitto's `use_identity_as_username`) and a topic level. Both
//! `pki` (which issues them) and `mqtt` (which connects as them) use this
//! module, so neither has to import the other.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// Default client identities: one device and one server, matching the ACLs
/// `broker up` writes and the topics `pub`/`sub` use.
pub const DEFAULT_DEVICE: &str = "device-001";
pub const DEFAULT_SERVER: &str = "server";

/// Where an output root keeps its certificates.
pub fn certs_dir(out: &Path) -> PathBuf {
    out.join("certs")
}

/// The certificate and key files of identity `name` in `certs_dir`.
pub fn files(certs_dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    (
        certs_dir.join(format!("{name}.crt")),
        certs_dir.join(format!("{name}.key")),
    )
}

/// A certificate identity is also a file name, an MQTT client id and a topic
/// level (`devices/NAME/...`), so it must be safe in all three.
pub fn validate_identity(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if name.len() > 128 {
        return Err("is longer than 128 characters".into());
    }
    if name.starts_with('.') || name.starts_with('-') {
        return Err("must not start with '.' or '-'".into());
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':')))
    {
        return Err(format!(
            "contains '{c}'; use letters, digits, '-', '_', '.' or ':'"
        ));
    }
    if name.ends_with("_pkcs8") {
        return Err("must not end with '_pkcs8' (that suffix names DER key files)".into());
    }
    Ok(())
}

/// Whether client id `id` belongs to `identity` by the rule `broker up`'s
/// client-id binding enforces (src/broker/plugin/mqttkit_bind.c): it is
/// `identity` or starts with `identity-`.
pub fn client_id_belongs_to(id: &str, identity: &str) -> bool {
    id.strip_prefix(identity)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('-'))
}

/// Parses one certificate file (PEM, or DER) into DER.
pub fn read_cert_der(path: &Path) -> Result<Vec<u8>> {
    let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    if data.first() == Some(&0x30) && x509_parser::parse_x509_certificate(&data).is_ok() {
        return Ok(data);
    }
    let (_, pem) = x509_parser::pem::parse_x509_pem(&data)
        .map_err(|e| anyhow::anyhow!("{}: not a PEM certificate: {e}", path.display()))?;
    Ok(pem.contents)
}

/// The subject CN of a parsed certificate, where it is a UTF-8 string.
pub fn common_name(cert: &x509_parser::certificate::X509Certificate<'_>) -> Option<String> {
    cert.subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_string)
}

/// The CN of the certificate in a PEM file; `None` when it cannot be read.
pub fn common_name_of_file(path: &Path) -> Option<String> {
    let der = read_cert_der(path).ok()?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).ok()?;
    common_name(&cert)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities() {
        assert!(validate_identity("device-001").is_ok());
        assert!(validate_identity("server").is_ok());
        for bad in ["", "a/b", "dev+", "#", ".hidden", "x_pkcs8", "a b"] {
            assert!(validate_identity(bad).is_err(), "{bad}");
        }
    }
}

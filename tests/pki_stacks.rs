//! Every `--key-type`'s files load in every stack: mosquitto (OpenSSL 3)
//! accepts the broker and device certificates, `openssl pkey`, Python
//! `cryptography` and Java's `PKCS8EncodedKeySpec` read every key; leaves
//! carry SKI/AKI and the keyUsage their key type allows.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{ok, run, stdout, Broker, BrokerOptions};

const T: Duration = Duration::from_secs(60);
const KEY_TYPES: &[&str] = &["ecdsa-p256", "ecdsa-p384", "ed25519", "rsa2048", "rsa3072"];

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn openssl(args: &[&str]) -> String {
    stdout(ok(&run(Command::new("openssl").args(args), T)))
}

/// The hex value on the line after `header` in `openssl x509 -text`.
fn ext_value(text: &str, header: &str) -> String {
    let mut lines = text.lines();
    lines
        .find(|l| l.contains(header))
        .unwrap_or_else(|| panic!("no {header} in {text}"));
    lines
        .next()
        .unwrap()
        .trim()
        .trim_start_matches("keyid:")
        .to_string()
}

const LOAD_KEYS_PY: &str = r#"
import sys
from cryptography import x509
from cryptography.hazmat.primitives import serialization
for path in sys.argv[1:]:
    data = open(path, "rb").read()
    if path.endswith(".crt"):
        c = x509.load_pem_x509_certificate(data)
        c.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
        print(path, "cert", c.subject.rfc4514_string())
    elif path.endswith("_pkcs8.key"):
        k = serialization.load_der_private_key(data, None)
        print(path, "der", type(k).__name__)
    else:
        k = serialization.load_pem_private_key(data, None)
        print(path, "pem", type(k).__name__)
"#;

const LOAD_KEYS_JAVA: &str = r#"import java.nio.file.*; import java.security.*; import java.security.spec.*;
public class LoadKeys { public static void main(String[] a) throws Exception {
  for (int i = 0; i < a.length; i += 2) {
    byte[] der = Files.readAllBytes(Paths.get(a[i]));
    PrivateKey k = KeyFactory.getInstance(a[i + 1]).generatePrivate(new PKCS8EncodedKeySpec(der));
    System.out.println(a[i] + " " + k.getAlgorithm() + " " + k.getFormat());
  } } }"#;

fn java_alg(kt: &str) -> &'static str {
    match kt {
        "ed25519" => "Ed25519",
        k if k.starts_with("rsa") => "RSA",
        _ => "EC",
    }
}

/// Checks one leaf: subject, SKI, AKI = the CA's SKI, keyUsage by key type.
fn check_leaf(certs: &Path, name: &str, kt: &str) {
    let ca = openssl(&["x509", "-in", s(&certs.join("ca.crt")), "-noout", "-text"]);
    let ca_ski = ext_value(&ca, "X509v3 Subject Key Identifier");
    let text = openssl(&[
        "x509",
        "-in",
        s(&certs.join(format!("{name}.crt"))),
        "-noout",
        "-text",
    ]);
    assert!(
        text.contains("Subject: O = Acme, OU = Sensors, CN = "),
        "{kt} {name}: {text}"
    );
    assert!(!ext_value(&text, "X509v3 Subject Key Identifier").is_empty());
    assert_eq!(
        ext_value(&text, "X509v3 Authority Key Identifier"),
        ca_ski,
        "{kt} {name}"
    );
    let usage = ext_value(&text, "X509v3 Key Usage");
    let want = if kt.starts_with("rsa") {
        "Digital Signature, Key Encipherment"
    } else {
        "Digital Signature"
    };
    assert_eq!(usage, want, "{kt} {name}");
    assert!(text.contains("CA:FALSE"), "{kt} {name}: {text}");
}

#[test]
fn every_key_type_loads_in_mosquitto_openssl_python_and_java() {
    let mut java_args: Vec<String> = Vec::new();
    let mut py_args: Vec<PathBuf> = Vec::new();
    let mut brokers = Vec::new();
    for kt in KEY_TYPES {
        let broker = Broker::start_with(BrokerOptions {
            init_args: vec![
                "--key-type".into(),
                kt.to_string(),
                "--subject".into(),
                "O=Acme,OU=Sensors".into(),
            ],
            ..Default::default()
        });
        let certs = broker.certs();
        // mosquitto (OpenSSL 3.0) loaded the broker key; a device connects.
        let args = common::mosquitto_tls_args(&broker, Some("device-001"));
        ok(&run(
            Command::new("mosquitto_pub").args(&args).args([
                "-t",
                "devices/device-001/telemetry",
                "-m",
                kt,
                "-q",
                "1",
            ]),
            T,
        ));
        for name in ["ca", "broker", "device-001", "server"] {
            let key = certs.join(format!("{name}.key"));
            let text = fs::read_to_string(&key).unwrap();
            assert!(
                text.starts_with("-----BEGIN PRIVATE KEY-----"),
                "{kt} {name}"
            );
            openssl(&["pkey", "-in", s(&key), "-noout"]);
            py_args.push(key);
            py_args.push(certs.join(format!("{name}.crt")));
        }
        for name in ["broker", "device-001", "server"] {
            check_leaf(&certs, name, kt);
        }
        for name in ["device-001", "server"] {
            let der = certs.join(format!("{name}_pkcs8.key"));
            openssl(&["pkey", "-inform", "DER", "-in", s(&der), "-noout"]);
            py_args.push(der.clone());
            java_args.extend([der.display().to_string(), java_alg(kt).to_string()]);
        }
        brokers.push(broker);
    }
    let py = run(
        Command::new(common::python())
            .arg("-c")
            .arg(LOAD_KEYS_PY)
            .args(&py_args),
        T,
    );
    let py_out = stdout(ok(&py));
    assert_eq!(py_out.lines().count(), py_args.len(), "{py_out}");
    assert!(py_out.contains("Ed25519PrivateKey"), "{py_out}");

    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("LoadKeys.java");
    fs::write(&src, LOAD_KEYS_JAVA).unwrap();
    let j = run(Command::new("java").arg(&src).args(&java_args), T);
    let j_out = stdout(ok(&j));
    assert_eq!(
        j_out.matches("PKCS#8").count(),
        java_args.len() / 2,
        "{j_out}"
    );
    assert!(
        j_out.contains(" EdDSA PKCS#8") || j_out.contains(" Ed25519 PKCS#8"),
        "{j_out}"
    );
}

#[test]
fn subject_and_org_flags_set_the_ca_and_issued_subjects() {
    let dir = tempfile::tempdir().unwrap();
    let mq = || {
        let mut c = Command::new(common::bin());
        c.current_dir(dir.path()).env_remove("MQTTKIT_OUT");
        c
    };
    ok(&run(
        mq().args([
            "pki",
            "init",
            "--org",
            "Acme",
            "--subject",
            "OU=Plant 1,C=JP",
        ]),
        T,
    ));
    let certs = dir.path().join("out/certs");
    let subj = |f: &str| openssl(&["x509", "-in", s(&certs.join(f)), "-noout", "-subject"]);
    assert_eq!(
        subj("ca.crt").trim(),
        "subject=O = Acme, OU = Plant 1, C = JP, CN = Acme Root CA"
    );
    // Issued later: the CA's attributes by default, or its own --subject.
    ok(&run(mq().args(["pki", "issue", "d2"]), T));
    assert_eq!(
        subj("d2.crt").trim(),
        "subject=O = Acme, OU = Plant 1, C = JP, CN = d2"
    );
    ok(&run(
        mq().args(["pki", "issue", "d3", "--subject", "O=Other,OU=Lab"]),
        T,
    ));
    assert_eq!(
        subj("d3.crt").trim(),
        "subject=O = Other, OU = Lab, CN = d3"
    );
    let o = run(mq().args(["pki", "issue", "d4", "--subject", "CN=x"]), T);
    assert!(!o.status.success());
    assert!(
        common::stderr(&o).contains("--subject 'CN=x': CN is the certificate's name"),
        "{}",
        common::stderr(&o)
    );
    assert!(!certs.join("d4.crt").exists());
}

//! `pki renew`, `list --expiring`, `inspect`, `export` and `import-ca`
//! against openssl, keytool and mosquitto.

mod common;

use std::fs;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::{ok, run, stderr, stdout, Broker, BrokerOptions};

const T: Duration = Duration::from_secs(60);

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn mqttkit(dir: &Path) -> Command {
    let mut c = Command::new(common::bin());
    c.current_dir(dir)
        .env_remove("MQTTKIT_OUT")
        .env_remove("MQTTKIT_CA_PASSPHRASE");
    c
}

fn openssl(dir: &Path, args: &[&str]) -> String {
    stdout(ok(&run(
        Command::new("openssl").current_dir(dir).args(args),
        T,
    )))
}

fn fails_with(o: &Output, want: &str) {
    assert!(!o.status.success(), "succeeded: {}", stdout(o));
    let err = stderr(o);
    assert!(err.contains(want), "want '{want}' in: {err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

fn publish(broker: &Broker, name: &str) -> Output {
    let args = common::mosquitto_tls_args(broker, Some(name));
    run(
        Command::new("mosquitto_pub").args(&args).args([
            "-t",
            &format!("devices/{name}/telemetry"),
            "-m",
            "x",
            "-q",
            "1",
        ]),
        T,
    )
}

/// A P-256 key in SEC1 form ("BEGIN EC PRIVATE KEY"), as `openssl ecparam` writes it.
fn ec_key(dir: &Path, file: &str) {
    let args = [
        "ecparam",
        "-name",
        "prime256v1",
        "-genkey",
        "-noout",
        "-out",
        file,
    ];
    openssl(dir, &args);
}

fn json(o: &Output) -> serde_json::Value {
    serde_json::from_str(&stdout(ok(o))).unwrap()
}

#[test]
fn renew_keeps_the_identity_and_list_expiring_flags_what_ends_soon() {
    let broker = Broker::start_with(BrokerOptions {
        init_args: vec!["--days".into(), "300".into()],
        ..Default::default()
    });
    let certs = broker.certs();
    let dir = broker.path();
    let serial = |f: &str| {
        openssl(
            dir,
            &["x509", "-in", s(&certs.join(f)), "-noout", "-serial"],
        )
    };
    let key_before = fs::read(certs.join("device-001.key")).unwrap();
    let serial_before = serial("device-001.crt");

    // Everything but the CA expires within 400 days: exit 3, named on stderr.
    let o = run(
        broker.mqttkit().args(["pki", "list", "--expiring", "400"]),
        T,
    );
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("device-001.crt expires"),
        "{}",
        stderr(&o)
    );
    assert!(!stderr(&o).contains("ca.crt expires"), "{}", stderr(&o));
    ok(&run(
        broker.mqttkit().args(["pki", "list", "--expiring", "10"]),
        T,
    ));

    ok(&run(
        broker
            .mqttkit()
            .args(["pki", "renew", "device-001", "--days", "500"]),
        T,
    ));
    assert_ne!(serial("device-001.crt"), serial_before);
    assert_eq!(
        fs::read(certs.join("device-001.key")).unwrap(),
        key_before,
        "key kept"
    );
    let text = openssl(
        dir,
        &[
            "x509",
            "-in",
            s(&certs.join("device-001.crt")),
            "-noout",
            "-subject",
            "-enddate",
        ],
    );
    assert!(text.contains("CN = device-001"), "{text}");
    openssl(
        dir,
        &[
            "verify",
            "-CAfile",
            s(&certs.join("ca.crt")),
            s(&certs.join("device-001.crt")),
        ],
    );
    ok(&publish(&broker, "device-001"));

    // --new-key: a new key, still the same identity; the broker keeps its names.
    ok(&run(
        broker
            .mqttkit()
            .args(["pki", "renew", "device-001", "--new-key"]),
        T,
    ));
    assert_ne!(fs::read(certs.join("device-001.key")).unwrap(), key_before);
    ok(&run(
        broker
            .mqttkit()
            .args(["pki", "renew", "broker", "--days", "600"]),
        T,
    ));
    let san = openssl(
        dir,
        &[
            "x509",
            "-in",
            s(&certs.join("broker.crt")),
            "-noout",
            "-ext",
            "subjectAltName",
        ],
    );
    assert!(san.contains("IP Address:127.0.0.1"), "{san}");
    let list = json(&run(broker.mqttkit().args(["pki", "list", "--json"]), T));
    for i in list.as_array().unwrap() {
        assert_eq!(i["chains_to_ca"], true, "{i}");
        assert_eq!(i["key_matches"], true, "{i}");
    }
    ok(&publish(&broker, "device-001"));
    fails_with(
        &run(broker.mqttkit().args(["pki", "renew", "nobody"]), T),
        "there is no",
    );
}

#[test]
fn inspect_reads_certificates_csrs_and_keys_in_pem_and_der() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(&run(
        mqttkit(d).args(["pki", "init", "--key-type", "rsa2048"]),
        T,
    ));
    let certs = d.join("out/certs");
    openssl(
        d,
        &[
            "x509",
            "-in",
            s(&certs.join("broker.crt")),
            "-outform",
            "DER",
            "-out",
            "broker.der",
        ],
    );
    ec_key(d, "sec1.key");
    openssl(
        d,
        &[
            "req",
            "-new",
            "-key",
            "sec1.key",
            "-subj",
            "/CN=csr-dev",
            "-addext",
            "subjectAltName=DNS:a.example",
            "-out",
            "dev.csr",
        ],
    );
    openssl(
        d,
        &[
            "rsa",
            "-in",
            s(&certs.join("server.key")),
            "-traditional",
            "-out",
            "pkcs1.key",
        ],
    );
    fs::write(d.join("junk.txt"), "hello").unwrap();
    let inspect = |f: &str| json(&run(mqttkit(d).args(["pki", "inspect", "--json", f]), T));
    let v = inspect("broker.der");
    assert_eq!(v["kind"], "certificate", "{v}");
    assert_eq!(v["key_type"], "RSA 2048", "{v}");
    assert_eq!(
        v["key_usage"],
        serde_json::json!(["digitalSignature", "keyEncipherment"])
    );
    assert!(
        v["subject_key_id"].is_string() && v["authority_key_id"].is_string(),
        "{v}"
    );
    let v = inspect("dev.csr");
    assert_eq!(
        (v["kind"].as_str(), v["key_type"].as_str()),
        (Some("csr"), Some("ECDSA P-256")),
        "{v}"
    );
    assert_eq!(v["sans"], serde_json::json!(["DNS:a.example"]));
    assert_eq!(v["signature_valid"], true);
    for (f, form) in [
        ("sec1.key", "SEC1"),
        ("pkcs1.key", "PKCS#1"),
        ("out/certs/server.key", "PKCS#8"),
        ("out/certs/server_pkcs8.key", "PKCS#8"),
    ] {
        let v = inspect(f);
        assert_eq!(
            (v["kind"].as_str(), v["format"].as_str()),
            (Some("private-key"), Some(form)),
            "{f}: {v}"
        );
    }
    let text = stdout(ok(&run(
        mqttkit(d).args(["pki", "inspect", "out/certs/device-001.crt"]),
        T,
    )));
    assert!(
        text.contains("usage     digitalSignature, keyEncipherment, clientAuth"),
        "{text}"
    );
    assert!(text.contains("chains to ca.crt: yes"), "{text}");
    fails_with(
        &run(mqttkit(d).args(["pki", "inspect", "junk.txt"]), T),
        "junk.txt: not a certificate, CSR or private key",
    );
}

fn with_stdin(cmd: &mut Command, input: &str) -> Output {
    assert_cmd::Command::from_std(std::mem::replace(cmd, Command::new("true")))
        .write_stdin(input.to_string())
        .timeout(T)
        .output()
        .unwrap()
}

#[test]
fn export_p12_reads_in_keytool_and_openssl_and_formats_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(&run(mqttkit(d).args(["pki", "init"]), T));
    let o = with_stdin(
        mqttkit(d).args(["pki", "export", "device-001", "--p12", "--password-stdin"]),
        "s3cret pw\n",
    );
    ok(&o);
    let p12 = d.join("out/export/device-001.p12");
    assert_eq!(
        std::os::unix::fs::MetadataExt::mode(&fs::metadata(&p12).unwrap()) & 0o777,
        0o600
    );
    let kt = run(
        Command::new("keytool").env("PW", "s3cret pw").args([
            "-list",
            "-storetype",
            "PKCS12",
            "-keystore",
            s(&p12),
            "-storepass:env",
            "PW",
        ]),
        T,
    );
    let listing = stdout(ok(&kt));
    assert!(
        listing.contains("device-001, ") && listing.contains("PrivateKeyEntry"),
        "{listing}"
    );
    assert!(
        listing.contains("ca, ") && listing.contains("trustedCertEntry"),
        "{listing}"
    );
    // OpenSSL 3 reads it without -legacy (AES-256-CBC, not RC2/3DES).
    let info = run(
        Command::new("openssl").env("PW", "s3cret pw").args([
            "pkcs12",
            "-info",
            "-in",
            s(&p12),
            "-passin",
            "env:PW",
            "-noenc",
        ]),
        T,
    );
    let out = stdout(ok(&info)) + &stderr(&info);
    assert!(
        out.contains("PBES2") && out.contains("AES-256-CBC"),
        "{out}"
    );
    assert!(
        out.contains("BEGIN PRIVATE KEY") && out.contains("CN = device-001"),
        "{out}"
    );
    let bad = run(
        Command::new("openssl").args([
            "pkcs12",
            "-info",
            "-in",
            s(&p12),
            "-passin",
            "pass:wrong",
            "-noout",
        ]),
        T,
    );
    assert!(!bad.status.success());
    fails_with(
        &run(mqttkit(d).args(["pki", "export", "device-001", "--p12"]), T),
        "pipe it with --password-stdin",
    );

    ok(&run(
        mqttkit(d).args(["pki", "export", "device-001", "--format", "pem"]),
        T,
    ));
    let pem = fs::read_to_string(d.join("out/export/device-001.pem")).unwrap();
    assert_eq!(pem.matches("BEGIN CERTIFICATE").count(), 2);
    assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"));
    ok(&run(
        mqttkit(d).args(["pki", "export", "device-001", "--format", "der"]),
        T,
    ));
    openssl(
        d,
        &[
            "x509",
            "-inform",
            "DER",
            "-in",
            "out/export/device-001.crt.der",
            "-noout",
        ],
    );
    openssl(
        d,
        &[
            "pkey",
            "-inform",
            "DER",
            "-in",
            "out/export/device-001.key.der",
            "-noout",
        ],
    );
    let sec1 = stdout(ok(&run(
        mqttkit(d).args([
            "pki",
            "export",
            "device-001",
            "--format",
            "pkcs1",
            "--output",
            "-",
        ]),
        T,
    )));
    assert!(sec1.starts_with("-----BEGIN EC PRIVATE KEY-----"), "{sec1}");
    ok(&run(
        mqttkit(d).args(["pki", "export", "device-001", "--format", "pkcs8"]),
        T,
    ));
    openssl(
        d,
        &["pkey", "-in", "out/export/device-001.pkcs8.key", "-noout"],
    );
    // Existing files are not replaced without --force.
    fails_with(
        &run(
            mqttkit(d).args(["pki", "export", "device-001", "--format", "pkcs8"]),
            T,
        ),
        "--force",
    );

    let ed = tempfile::tempdir().unwrap();
    ok(&run(
        mqttkit(ed.path()).args(["pki", "init", "--key-type", "ed25519"]),
        T,
    ));
    fails_with(
        &run(
            mqttkit(ed.path()).args(["pki", "export", "device-001", "--format", "pkcs1"]),
            T,
        ),
        "--format pkcs1: Ed25519 keys have no PKCS#1/SEC1 form; use --format pkcs8",
    );
    ok(&run(
        mqttkit(ed.path()).args([
            "pki",
            "export",
            "device-001",
            "--format",
            "pkcs8",
            "--output",
            "-",
        ]),
        T,
    ));
}

/// Issues the broker and both default clients from the CA now in `broker`.
fn reissue_all(broker: &Broker) {
    ok(&run(
        broker.mqttkit().args([
            "pki",
            "issue",
            "broker",
            "--server",
            "--host",
            "127.0.0.1",
            "--host",
            "localhost",
            "--force",
        ]),
        T,
    ));
    for name in ["device-001", "server"] {
        ok(&run(
            broker.mqttkit().args(["pki", "issue", name, "--force"]),
            T,
        ));
    }
}

#[test]
fn import_ca_takes_an_openssl_rsa_ca_and_an_encrypted_ec_ca() {
    let broker = Broker::start_with(BrokerOptions {
        no_broker: true,
        ..Default::default()
    });
    let d = broker.path();
    let certs = broker.certs();
    // The seed's recipe (CN=MyRootCA), its key as PKCS#1 ("BEGIN RSA PRIVATE KEY").
    openssl(
        d,
        &[
            "req",
            "-new",
            "-x509",
            "-days",
            "365",
            "-nodes",
            "-subj",
            "/CN=MyRootCA",
            "-keyout",
            "rsa8.key",
            "-out",
            "rsa.crt",
        ],
    );
    openssl(
        d,
        &["rsa", "-in", "rsa8.key", "-traditional", "-out", "rsa.key"],
    );
    assert!(fs::read_to_string(d.join("rsa.key"))
        .unwrap()
        .starts_with("-----BEGIN RSA PRIVATE KEY"));
    // An EC CA whose key is encrypted PKCS#8 (PBES2, AES-256-CBC).
    ec_key(d, "ec.key");
    openssl(
        d,
        &[
            "req",
            "-new",
            "-x509",
            "-days",
            "30",
            "-key",
            "ec.key",
            "-subj",
            "/O=Corp/CN=Corp EC CA",
            "-out",
            "ec.crt",
        ],
    );
    ok(&run(
        Command::new("openssl")
            .current_dir(d)
            .env("PW", "ca pass")
            .args([
                "pkcs8",
                "-topk8",
                "-in",
                "ec.key",
                "-v2",
                "aes-256-cbc",
                "-passout",
                "env:PW",
                "-out",
                "ec_enc.key",
            ]),
        T,
    ));

    // Refused, with nothing written: a device certificate, a key that is not the pair,
    // an encrypted key without (or with a wrong) passphrase.
    let before = fs::read(certs.join("ca.crt")).unwrap();
    let import = |cert: &str, key: &str, pass: Option<&str>| {
        let mut c = broker.mqttkit();
        c.env_remove("MQTTKIT_CA_PASSPHRASE").args([
            "pki",
            "import-ca",
            "--cert",
            cert,
            "--key",
            key,
            "--force",
        ]);
        if let Some(p) = pass {
            c.env("MQTTKIT_CA_PASSPHRASE", p);
        }
        run(&mut c, T)
    };
    fails_with(
        &import("out/certs/device-001.crt", "out/certs/device-001.key", None),
        "not a CA certificate",
    );
    fails_with(
        &import("rsa.crt", "ec.key", None),
        "not the key of --cert rsa.crt",
    );
    fails_with(
        &import("ec.crt", "ec_enc.key", None),
        "no passphrase was given; set MQTTKIT_CA_PASSPHRASE",
    );
    fails_with(
        &import("ec.crt", "ec_enc.key", Some("nope")),
        "wrong passphrase",
    );
    assert_eq!(
        fs::read(certs.join("ca.crt")).unwrap(),
        before,
        "ca.crt changed"
    );

    // After a CA swap, an identity from the old CA is not exported with the new chain.
    ok(&import("rsa.crt", "rsa.key", None));
    let o = with_stdin(
        broker
            .mqttkit()
            .args(["pki", "export", "device-001", "--p12", "--password-stdin"]),
        "pw\n",
    );
    fails_with(&o, "device-001.crt is not signed by");
    for (cert, key, pass) in [
        ("rsa.crt", "rsa.key", None),
        ("ec.crt", "ec_enc.key", Some("ca pass")),
    ] {
        ok(&import(cert, key, pass));
        let ca_key = fs::read_to_string(certs.join("ca.key")).unwrap();
        assert!(ca_key.starts_with("-----BEGIN PRIVATE KEY-----"), "{cert}");
        reissue_all(&broker);
        openssl(
            d,
            &[
                "verify",
                "-CAfile",
                s(&certs.join("ca.crt")),
                s(&certs.join("broker.crt")),
                s(&certs.join("device-001.crt")),
            ],
        );
        // AKI of the issued certificate is the imported CA's own SKI (openssl's SHA-1 form).
        let ca = openssl(
            d,
            &[
                "x509",
                "-in",
                s(&certs.join("ca.crt")),
                "-noout",
                "-ext",
                "subjectKeyIdentifier",
            ],
        );
        let leaf = openssl(
            d,
            &[
                "x509",
                "-in",
                s(&certs.join("device-001.crt")),
                "-noout",
                "-ext",
                "authorityKeyIdentifier",
            ],
        );
        let ski = ca.lines().nth(1).unwrap().trim().to_string();
        assert!(leaf.contains(&ski), "{cert}: {ca} / {leaf}");
        broker.up();
        ok(&publish(&broker, "device-001"));
        broker.stop();
    }
    let subj = openssl(
        d,
        &[
            "x509",
            "-in",
            s(&certs.join("device-001.crt")),
            "-noout",
            "-subject",
            "-issuer",
        ],
    );
    assert!(
        subj.contains("subject=O = Corp, CN = device-001")
            && subj.contains("issuer=O = Corp, CN = Corp EC CA"),
        "{subj}"
    );
}

#[test]
fn revoke_writes_a_crl_that_the_restarted_broker_enforces() {
    let broker = Broker::start_with(BrokerOptions {
        clients: vec!["device-002".into()],
        ..Default::default()
    });
    let certs = broker.certs();
    ok(&publish(&broker, "device-002"));
    ok(&run(
        broker
            .mqttkit()
            .args(["pki", "revoke", "device-002", "--reason", "key-compromise"]),
        T,
    ));
    let crl = openssl(
        broker.path(),
        &["crl", "-in", s(&certs.join("crl.pem")), "-noout", "-text"],
    );
    assert!(
        crl.contains("Next Update") && crl.contains("Key Compromise"),
        "{crl}"
    );
    let v = run(
        Command::new("openssl").args([
            "verify",
            "-crl_check",
            "-CAfile",
            s(&certs.join("ca.crt")),
            "-CRLfile",
            s(&certs.join("crl.pem")),
            s(&certs.join("device-002.crt")),
        ]),
        T,
    );
    assert!(
        !v.status.success() && (stdout(&v) + &stderr(&v)).contains("certificate revoked"),
        "{}{}",
        stdout(&v),
        stderr(&v)
    );
    broker.stop();
    let up = broker.up();
    assert!(
        !stderr(&up).contains("re-issued"),
        "a 30-day CRL was re-issued"
    );
    let conf = fs::read_to_string(broker.out().join("mosquitto/mosquitto.conf")).unwrap();
    assert!(
        conf.contains("crlfile ../certs/crl.pem") || conf.contains("crl.pem"),
        "{conf}"
    );
    assert!(
        !publish(&broker, "device-002").status.success(),
        "revoked device-002 connected"
    );
    ok(&publish(&broker, "device-001"));
    let list = stdout(ok(&run(broker.mqttkit().args(["pki", "list"]), T)));
    let block = list
        .split("out/certs/")
        .find(|b| b.starts_with("device-002.crt"))
        .unwrap();
    assert!(block.contains("REVOKED"), "{list}");
    fails_with(
        &run(broker.mqttkit().args(["pki", "revoke", "device-002"]), T),
        "is already revoked",
    );
    fails_with(
        &run(broker.mqttkit().args(["pki", "renew", "device-002"]), T),
        "is revoked; a renewal would undo that",
    );
}

#[test]
fn broker_up_reissues_a_crl_close_to_its_next_update() {
    let broker = Broker::start_with(BrokerOptions {
        clients: vec!["device-002".into()],
        no_broker: true,
        ..Default::default()
    });
    let crl = broker.certs().join("crl.pem");
    ok(&run(
        broker
            .mqttkit()
            .args(["pki", "revoke", "device-002", "--crl-days", "1"]),
        T,
    ));
    let info = || {
        openssl(
            broker.path(),
            &["crl", "-in", s(&crl), "-noout", "-crlnumber", "-nextupdate"],
        )
    };
    let before = info();
    assert!(before.contains("crlNumber=0x01"), "{before}");
    // One day left (< 7): `broker up` signs a new one before mosquitto reads it.
    let up = broker.up();
    assert!(stderr(&up).contains("re-issued"), "{}", stderr(&up));
    let after = info();
    assert!(after.contains("crlNumber=0x02"), "{after}");
    assert!(!publish(&broker, "device-002").status.success());
    ok(&publish(&broker, "device-001"));
    // Still one day left: `broker status` on the running broker re-signs it
    // too, and the broker re-reads it (SIGHUP) and still enforces it.
    let st = run(
        broker.mqttkit().args(["broker", "status", "--out", "out"]),
        T,
    );
    ok(&st);
    assert!(stderr(&st).contains("re-issued"), "{}", stderr(&st));
    let third = info();
    assert!(third.contains("crlNumber=0x03"), "{third}");
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(!publish(&broker, "device-002").status.success());
    ok(&publish(&broker, "device-001"));
    // And `doctor`: it re-signs and says so.
    let dr = run(broker.mqttkit().args(["doctor", "--out", "out"]), T);
    ok(&dr);
    assert!(stdout(&dr).contains("re-signed"), "{}", stdout(&dr));
    let fourth = info();
    assert!(fourth.contains("crlNumber=0x04"), "{fourth}");
}

/// A Java TLS client with only the PKCS#12: its key and chain as the client
/// identity, its trusted `ca` entry as the trust store; MQTT CONNECT by hand.
const P12_CONNECT_JAVA: &str = r#"import javax.net.ssl.*; import java.security.KeyStore; import java.io.*;
public class P12Connect { public static void main(String[] a) throws Exception {
  char[] pw = System.getenv("PW").toCharArray();
  KeyStore ks = KeyStore.getInstance("PKCS12");
  try (InputStream f = new FileInputStream(a[0])) { ks.load(f, pw); }
  KeyManagerFactory kmf = KeyManagerFactory.getInstance("PKIX"); kmf.init(ks, pw);
  TrustManagerFactory tmf = TrustManagerFactory.getInstance("PKIX"); tmf.init(ks);
  SSLContext ctx = SSLContext.getInstance("TLS");
  ctx.init(kmf.getKeyManagers(), tmf.getTrustManagers(), null);
  SSLSocket s = (SSLSocket) ctx.getSocketFactory().createSocket("localhost", Integer.parseInt(a[1]));
  SSLParameters p = s.getSSLParameters(); p.setEndpointIdentificationAlgorithm("HTTPS"); s.setSSLParameters(p);
  s.setSoTimeout(10000);
  s.startHandshake();
  byte[] id = a[2].getBytes();
  ByteArrayOutputStream b = new ByteArrayOutputStream();
  b.write(new byte[] {0, 4, 'M', 'Q', 'T', 'T', 4, 2, 0, 30, 0, (byte) id.length}); b.write(id);
  OutputStream out = s.getOutputStream();
  out.write(0x10); out.write(b.size()); b.writeTo(out); out.flush();
  DataInputStream in = new DataInputStream(s.getInputStream());
  int type = in.readUnsignedByte(); in.readUnsignedByte(); in.readUnsignedByte(); int rc = in.readUnsignedByte();
  System.out.println("CONNACK type=" + Integer.toHexString(type) + " rc=" + rc);
  s.close(); } }"#;

#[test]
fn a_java_client_connects_to_mosquitto_with_the_exported_p12() {
    let broker = Broker::start();
    ok(&with_stdin(
        broker
            .mqttkit()
            .args(["pki", "export", "device-001", "--p12", "--password-stdin"]),
        "java pw\n",
    ));
    let src = broker.path().join("P12Connect.java");
    fs::write(&src, P12_CONNECT_JAVA).unwrap();
    let p12 = broker.out().join("export/device-001.p12");
    let o = run(
        Command::new("java")
            .env("PW", "java pw")
            .arg(&src)
            .arg(&p12)
            .arg(broker.port.to_string())
            .arg("device-001"),
        T,
    );
    assert_eq!(stdout(ok(&o)).trim(), "CONNACK type=20 rc=0");
}

#[test]
fn an_encrypted_ca_key_is_used_transparently_with_the_passphrase() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let with_pass = |c: &mut Command, p: &str| {
        c.env("MQTTKIT_CA_PASSPHRASE", p);
    };
    // No passphrase and no terminal: refused, nothing written.
    fails_with(
        &run(mqttkit(d).args(["pki", "init", "--encrypt-ca-key"]), T),
        "--encrypt-ca-key: needs a passphrase; set MQTTKIT_CA_PASSPHRASE",
    );
    assert!(!d.join("out").exists());
    let mut init = mqttkit(d);
    with_pass(&mut init, "ca secret");
    ok(&run(init.args(["pki", "init", "--encrypt-ca-key"]), T));
    let certs = d.join("out/certs");
    let key = fs::read_to_string(certs.join("ca.key")).unwrap();
    assert!(
        key.starts_with("-----BEGIN ENCRYPTED PRIVATE KEY-----"),
        "{key}"
    );
    ok(&run(
        Command::new("openssl").env("PW", "ca secret").args([
            "pkey",
            "-in",
            s(&certs.join("ca.key")),
            "-passin",
            "env:PW",
            "-noout",
        ]),
        T,
    ));
    fails_with(
        &run(mqttkit(d).args(["pki", "issue", "d2"]), T),
        "ca.key: the key is encrypted and no passphrase was given",
    );
    let mut wrong = mqttkit(d);
    with_pass(&mut wrong, "nope");
    fails_with(
        &run(wrong.args(["pki", "issue", "d2"]), T),
        "wrong passphrase",
    );
    assert!(!certs.join("d2.crt").exists());
    for args in [
        &["pki", "issue", "d2"][..],
        &["pki", "renew", "device-001"],
        &["pki", "revoke", "d2"],
    ] {
        let mut c = mqttkit(d);
        with_pass(&mut c, "ca secret");
        ok(&run(c.args(args), T));
    }
    openssl(
        d,
        &[
            "verify",
            "-CAfile",
            s(&certs.join("ca.crt")),
            s(&certs.join("d2.crt")),
            s(&certs.join("device-001.crt")),
        ],
    );
}

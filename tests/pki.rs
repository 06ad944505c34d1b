//! `pki` against the real tools: openssl, Java, mosquitto and rustls.

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{ok, run, stderr, stdout};

const T: Duration = Duration::from_secs(60);

fn mqttkit(dir: &Path) -> Command {
    let mut c = Command::new(common::bin());
    c.current_dir(dir).env_remove("MQTTKIT_OUT");
    c
}

fn openssl(args: &[&str]) -> String {
    stdout(ok(&run(Command::new("openssl").args(args), T)))
}

fn file_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn init_writes_a_ca_broker_and_clients_that_openssl_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let o = ok(&run(
        mqttkit(dir.path()).args(["pki", "init", "--host", "broker.test", "--host", "10.1.2.3"]),
        T,
    ))
    .clone();
    assert!(stdout(&o).contains("broker names: broker.test, 10.1.2.3"));
    let certs = dir.path().join("out/certs");
    for f in [
        "ca.crt",
        "ca.key",
        "broker.crt",
        "broker.key",
        "device-001.crt",
        "device-001.key",
        "device-001_pkcs8.key",
        "server.crt",
        "server.key",
        "server_pkcs8.key",
    ] {
        let meta = fs::metadata(certs.join(f)).unwrap_or_else(|_| panic!("{f} missing"));
        let want = if f.ends_with(".key") { 0o600 } else { 0o644 };
        assert_eq!(meta.mode() & 0o777, want, "{f} mode");
    }
    let ca = certs.join("ca.crt");
    let verified = openssl(&[
        "verify",
        "-CAfile",
        file_str(&ca),
        file_str(&certs.join("broker.crt")),
        file_str(&certs.join("device-001.crt")),
        file_str(&certs.join("server.crt")),
    ]);
    assert_eq!(verified.matches(": OK").count(), 3, "{verified}");

    let ca_text = openssl(&["x509", "-in", file_str(&ca), "-noout", "-text"]);
    assert!(ca_text.contains("CA:TRUE"), "{ca_text}");
    assert!(ca_text.contains("Certificate Sign, CRL Sign"), "{ca_text}");

    let broker = openssl(&[
        "x509",
        "-in",
        file_str(&certs.join("broker.crt")),
        "-noout",
        "-text",
    ]);
    assert!(
        broker.contains("DNS:broker.test, IP Address:10.1.2.3"),
        "{broker}"
    );
    assert!(broker.contains("TLS Web Server Authentication"), "{broker}");
    assert!(!broker.contains("CA:TRUE"));

    let client = openssl(&[
        "x509",
        "-in",
        file_str(&certs.join("device-001.crt")),
        "-noout",
        "-subject",
        "-ext",
        "extendedKeyUsage",
    ]);
    assert!(client.contains("CN = device-001"), "{client}");
    assert!(client.contains("TLS Web Client Authentication"), "{client}");

    // Serial numbers are random, not 1, 2, 3.
    let s1 = openssl(&[
        "x509",
        "-in",
        file_str(&certs.join("device-001.crt")),
        "-noout",
        "-serial",
    ]);
    let s2 = openssl(&[
        "x509",
        "-in",
        file_str(&certs.join("server.crt")),
        "-noout",
        "-serial",
    ]);
    assert_ne!(s1, s2);
    assert!(s1.trim().len() > "serial=".len() + 16, "{s1}");

    // The DER PKCS#8 key is the same key as the PEM one.
    let pem_pub = openssl(&[
        "pkey",
        "-in",
        file_str(&certs.join("device-001.key")),
        "-pubout",
    ]);
    let der_pub = openssl(&[
        "pkey",
        "-inform",
        "DER",
        "-in",
        file_str(&certs.join("device-001_pkcs8.key")),
        "-pubout",
    ]);
    assert_eq!(pem_pub, der_pub);
    let cert_pub = openssl(&[
        "x509",
        "-in",
        file_str(&certs.join("device-001.crt")),
        "-noout",
        "-pubkey",
    ]);
    assert_eq!(pem_pub, cert_pub);
}

#[test]
fn default_broker_names_cover_loopback_and_hostname() {
    let dir = tempfile::tempdir().unwrap();
    ok(&run(mqttkit(dir.path()).args(["pki", "init"]), T));
    let text = openssl(&[
        "x509",
        "-in",
        file_str(&dir.path().join("out/certs/broker.crt")),
        "-noout",
        "-ext",
        "subjectAltName",
    ]);
    assert!(text.contains("DNS:localhost"), "{text}");
    assert!(text.contains("IP Address:127.0.0.1"), "{text}");
    assert!(text.contains("IP Address:0:0:0:0:0:0:0:1"), "{text}");
}

#[test]
fn java_loads_the_pkcs8_der_key() {
    if Command::new("java").arg("-version").output().is_err() {
        panic!("java is required (scripts/test.sh installs default-jdk-headless)");
    }
    let dir = tempfile::tempdir().unwrap();
    ok(&run(
        mqttkit(dir.path()).args(["pki", "init", "--client", "javadev"]),
        T,
    ));
    let rsa = tempfile::tempdir().unwrap();
    ok(&run(
        mqttkit(rsa.path()).args([
            "pki",
            "init",
            "--client",
            "javadev",
            "--key-type",
            "rsa2048",
        ]),
        T,
    ));
    let src = dir.path().join("LoadKey.java");
    fs::write(
        &src,
        r#"import java.nio.file.*; import java.security.*; import java.security.spec.*;
public class LoadKey { public static void main(String[] a) throws Exception {
  byte[] der = Files.readAllBytes(Paths.get(a[0]));
  PrivateKey k = KeyFactory.getInstance(a[1]).generatePrivate(new PKCS8EncodedKeySpec(der));
  System.out.println(k.getAlgorithm() + " " + k.getFormat()); } }"#,
    )
    .unwrap();
    let ec = run(
        Command::new("java")
            .arg(&src)
            .arg(dir.path().join("out/certs/javadev_pkcs8.key"))
            .arg("EC"),
        T,
    );
    assert_eq!(stdout(ok(&ec)).trim(), "EC PKCS#8");
    let r = run(
        Command::new("java")
            .arg(&src)
            .arg(rsa.path().join("out/certs/javadev_pkcs8.key"))
            .arg("RSA"),
        T,
    );
    assert_eq!(stdout(ok(&r)).trim(), "RSA PKCS#8");
}

#[test]
fn every_key_type_produces_a_verifiable_chain() {
    for kt in ["ecdsa-p256", "ecdsa-p384", "ed25519", "rsa2048", "rsa3072"] {
        let dir = tempfile::tempdir().unwrap();
        ok(&run(
            mqttkit(dir.path()).args([
                "pki",
                "init",
                "--key-type",
                kt,
                "--days",
                "30",
                "--ca-days",
                "60",
            ]),
            T,
        ));
        let certs = dir.path().join("out/certs");
        let v = openssl(&[
            "verify",
            "-CAfile",
            file_str(&certs.join("ca.crt")),
            file_str(&certs.join("broker.crt")),
        ]);
        assert!(v.contains(": OK"), "{kt}: {v}");
        let list = stdout(ok(&run(
            mqttkit(dir.path()).args(["pki", "list", "--json"]),
            T,
        )));
        let infos: serde_json::Value = serde_json::from_str(&list).unwrap();
        let infos = infos.as_array().unwrap();
        assert_eq!(infos.len(), 4, "{kt}");
        for i in infos {
            assert_eq!(i["chains_to_ca"], true, "{kt} {i}");
            assert_eq!(i["key_matches"], true, "{kt} {i}");
        }
        let broker = infos
            .iter()
            .find(|i| i["file"].as_str().unwrap().ends_with("broker.crt"))
            .unwrap();
        assert!(broker["days_left"].as_i64().unwrap() >= 29, "{broker}");
        let want = match kt {
            "ecdsa-p256" => "ECDSA P-256",
            "ecdsa-p384" => "ECDSA P-384",
            "ed25519" => "Ed25519",
            "rsa2048" => "RSA 2048",
            _ => "RSA 3072",
        };
        assert_eq!(broker["key_type"], want);
    }
}

fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<_> = walk(dir)
        .into_iter()
        .map(|p| (p.display().to_string(), fs::read(&p).unwrap()))
        .collect();
    v.sort();
    v
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[test]
fn bad_input_is_one_line_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["pki", "init", "--key-type", "dsa"],
            "invalid value 'dsa' for '--key-type",
        ),
        (
            vec!["pki", "init", "--host", "not a host"],
            "--host 'not a host' is neither a DNS name nor an IP address",
        ),
        (vec!["pki", "init", "--client", "a/b"], "--client 'a/b'"),
        (
            vec!["pki", "init", "--out", "afile/sub"],
            "is not a directory; choose another --out",
        ),
        (vec!["pki", "issue", "extra"], "no CA in out/certs"),
        (
            vec!["pki", "init", "--client", "ca"],
            "--client 'ca' is reserved",
        ),
        (
            vec!["pki", "init", "--client", "broker"],
            "--client 'broker' is reserved",
        ),
    ];
    fs::write(dir.path().join("afile"), "x").unwrap();
    for (args, want) in cases {
        let o = run(mqttkit(dir.path()).args(&args), T);
        assert!(!o.status.success(), "{args:?} succeeded");
        let err = stderr(&o);
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
        if !args.contains(&"--key-type") {
            assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
        }
        assert!(!dir.path().join("out").exists(), "{args:?} wrote files");
    }

    // Existing files are never overwritten without --force.
    ok(&run(mqttkit(dir.path()).args(["pki", "init"]), T));
    let before = snapshot(&dir.path().join("out"));
    let o = run(
        mqttkit(dir.path()).args(["pki", "init", "--client", "new-one"]),
        T,
    );
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("out/certs/ca.crt already exists") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert_eq!(before, snapshot(&dir.path().join("out")), "files changed");
    assert!(!dir.path().join("out/certs/new-one.crt").exists());
    let o = run(mqttkit(dir.path()).args(["pki", "issue", "device-001"]), T);
    assert!(
        stderr(&o).contains("device-001.crt already exists"),
        "{}",
        stderr(&o)
    );
    assert_eq!(before, snapshot(&dir.path().join("out")), "files changed");

    // --force replaces, with a new CA.
    ok(&run(
        mqttkit(dir.path()).args(["pki", "init", "--force"]),
        T,
    ));
    assert_ne!(before, snapshot(&dir.path().join("out")));
}

#[test]
fn issue_adds_clients_and_servers_from_the_existing_ca() {
    let dir = tempfile::tempdir().unwrap();
    ok(&run(mqttkit(dir.path()).args(["pki", "init"]), T));
    ok(&run(
        mqttkit(dir.path()).args(["pki", "issue", "device-002"]),
        T,
    ));
    ok(&run(
        mqttkit(dir.path()).args(["pki", "issue", "edge", "--server", "--host", "edge.local"]),
        T,
    ));
    let certs = dir.path().join("out/certs");
    let v = openssl(&[
        "verify",
        "-CAfile",
        file_str(&certs.join("ca.crt")),
        file_str(&certs.join("device-002.crt")),
        file_str(&certs.join("edge.crt")),
    ]);
    assert_eq!(v.matches(": OK").count(), 2, "{v}");
    let edge = openssl(&[
        "x509",
        "-in",
        file_str(&certs.join("edge.crt")),
        "-noout",
        "-ext",
        "subjectAltName,extendedKeyUsage",
    ]);
    assert!(
        edge.contains("DNS:edge.local") && edge.contains("Server Authentication"),
        "{edge}"
    );
    assert!(certs.join("device-002_pkcs8.key").exists());

    // A key that does not belong to its certificate is reported.
    fs::copy(certs.join("server.key"), certs.join("device-002.key")).unwrap();
    let list = stdout(ok(&run(mqttkit(dir.path()).args(["pki", "list"]), T)));
    assert!(list.contains("DOES NOT MATCH"), "{list}");
    let o = run(
        mqttkit(dir.path()).args(["pki", "issue", "x", "--host", "a.b"]),
        T,
    );
    assert!(stderr(&o).contains("--host only applies to server certificates"));
}

#[test]
fn mosquitto_requires_a_certificate_from_this_ca_and_rustls_verifies_the_broker() {
    let broker = common::Broker::start();
    let args = common::mosquitto_tls_args(&broker, Some("device-001"));
    // A client presenting NAME.crt is accepted.
    let o = run(
        Command::new("mosquitto_pub").args(&args).args([
            "-t",
            "devices/device-001/telemetry",
            "-m",
            "x",
            "-q",
            "1",
        ]),
        T,
    );
    ok(&o);
    // No certificate: refused.
    let none = common::mosquitto_tls_args(&broker, None);
    let o = run(
        Command::new("mosquitto_pub").args(&none).args([
            "-t",
            "devices/device-001/telemetry",
            "-m",
            "x",
        ]),
        T,
    );
    assert!(!o.status.success(), "no-certificate client was accepted");
    // A certificate from another CA: refused.
    let other = tempfile::tempdir().unwrap();
    ok(&run(mqttkit(other.path()).args(["pki", "init"]), T));
    let oc = other.path().join("out/certs");
    let o = run(
        Command::new("mosquitto_pub")
            .args(&none)
            .args([
                "--cert",
                file_str(&oc.join("device-001.crt")),
                "--key",
                file_str(&oc.join("device-001.key")),
            ])
            .args(["-t", "devices/device-001/telemetry", "-m", "x"]),
        T,
    );
    assert!(!o.status.success(), "foreign-CA client was accepted");
    assert!(
        broker.log().contains("certificate verify failed")
            || broker.log().contains("OpenSSL Error"),
        "{}",
        broker.log()
    );

    // rustls (rumqttc's TLS) verifies the broker by name and by IP address.
    let rt = tokio::runtime::Runtime::new().unwrap();
    for host in ["localhost", "127.0.0.1"] {
        let conn = mqttkit::mqtt::ConnectSpec {
            host: Some(host.into()),
            port: Some(broker.port),
            cafile: Some(broker.certs().join("ca.crt")),
            identity: Some((
                broker.certs().join("server.crt"),
                broker.certs().join("server.key"),
            )),
            ..mqttkit::mqtt::ConnectSpec::bare(&broker.out())
        };
        let ep = conn.resolve(mqttkit::mqtt::Role::Server).unwrap();
        rt.block_on(mqttkit::mqtt::probe::connect_once(
            &ep,
            "rustls-check",
            Duration::from_secs(10),
        ))
        .unwrap_or_else(|e| panic!("{host}: {e}"));
    }
}

/// Every file of a PKI directory except the writer's lock file.
fn pki_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    snapshot(dir)
        .into_iter()
        .filter(|(p, _)| !p.ends_with(".mqttkit.lock"))
        .collect()
}

#[test]
fn init_force_with_a_planted_failure_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    ok(&run(mqttkit(dir.path()).args(["pki", "init"]), T));
    let certs = dir.path().join("out/certs");

    // A directory where a key goes.
    fs::remove_file(certs.join("broker.key")).unwrap();
    fs::create_dir(certs.join("broker.key")).unwrap();
    let before = pki_files(&certs);
    let o = run(mqttkit(dir.path()).args(["pki", "init", "--force"]), T);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(err.contains("broker.key is not a regular file"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert_eq!(before, pki_files(&certs), "files changed");
    fs::remove_dir(certs.join("broker.key")).unwrap();

    // A read-only file among the targets.
    ok(&run(
        mqttkit(dir.path()).args(["pki", "init", "--force"]),
        T,
    ));
    let ro = certs.join("device-001.crt");
    fs::set_permissions(&ro, std::os::unix::fs::PermissionsExt::from_mode(0o444)).unwrap();
    let before = pki_files(&certs);
    let o = run(mqttkit(dir.path()).args(["pki", "init", "--force"]), T);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("device-001.crt is read-only"),
        "{}",
        stderr(&o)
    );
    assert_eq!(before, pki_files(&certs), "files changed");
}

fn have_strace() -> bool {
    Command::new("strace")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// SIGKILL at each rename of `pki init --force` (strace fault injection):
/// after the next run the set is the old one or the new one, whole, and no
/// temp file (with or without key material) is left.
#[test]
fn init_force_killed_at_any_rename_leaves_the_old_or_the_new_set() {
    if !have_strace() {
        eprintln!("SKIPPED: strace is not installed (apt-get install strace)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    ok(&run(mqttkit(dir.path()).args(["pki", "init"]), T));
    let certs = dir.path().join("out/certs");
    let mut outcomes = (0, 0);
    for when in 1..=14 {
        let old = pki_files(&certs);
        let o = run(
            Command::new("strace")
                .current_dir(dir.path())
                .env_remove("MQTTKIT_OUT")
                .args([
                    "-f",
                    "-qq",
                    "-o",
                    "/dev/null",
                    "-e",
                    "trace=rename,renameat,renameat2",
                    "-e",
                ])
                .arg(format!(
                    "inject=rename,renameat,renameat2:signal=SIGKILL:when={when}"
                ))
                .args([common::bin(), "pki", "init", "--force"]),
            T,
        );
        let killed = !o.status.success();
        // The next run repairs what the kill left.
        ok(&run(mqttkit(dir.path()).args(["pki", "list"]), T));
        let now = pki_files(&certs);
        let names = |v: &[(String, Vec<u8>)]| v.iter().map(|(p, _)| p.clone()).collect::<Vec<_>>();
        assert_eq!(
            names(&old),
            names(&now),
            "rename {when}: the file set changed"
        );
        let same = old.iter().zip(&now).filter(|(a, b)| a.1 == b.1).count();
        if same == old.len() {
            assert!(killed, "rename {when}: a finished run changed nothing");
            outcomes.0 += 1;
        } else {
            assert_eq!(
                same, 0,
                "rename {when}: a mix of old and new files: {now:?}"
            );
            outcomes.1 += 1;
            let verified = openssl(&[
                "verify",
                "-CAfile",
                file_str(&certs.join("ca.crt")),
                file_str(&certs.join("broker.crt")),
                file_str(&certs.join("device-001.crt")),
            ]);
            assert_eq!(verified.matches(": OK").count(), 2, "{verified}");
        }
        let temps: Vec<_> = walk(&certs)
            .into_iter()
            .filter(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with(".mqttkit-")
            })
            .collect();
        assert!(
            temps.is_empty(),
            "rename {when}: temp files left: {temps:?}"
        );
    }
    eprintln!(
        "kept the old set {} times, the new set {} times",
        outcomes.0, outcomes.1
    );
    // Early kills keep the old set, late ones (after the commit) the new one.
    assert!(outcomes.0 > 0 && outcomes.1 > 0, "{outcomes:?}");
}

#[test]
fn a_leaf_that_outlives_its_ca_is_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    ok(&run(
        mqttkit(dir.path()).args(["pki", "init", "--ca-days", "10", "--days", "5"]),
        T,
    ));
    let o = ok(&run(
        mqttkit(dir.path()).args(["pki", "issue", "d2", "--days", "30"]),
        T,
    ))
    .clone();
    let err = stderr(&o);
    assert!(err.contains("warning: --days 30 outlives the CA"), "{err}");
    assert!(
        err.contains("pass --days 9 or less") || err.contains("pass --days 10 or less"),
        "{err}"
    );
    let o = ok(&run(
        mqttkit(dir.path()).args(["pki", "issue", "d3", "--days", "5"]),
        T,
    ))
    .clone();
    assert!(!stderr(&o).contains("outlives"), "{}", stderr(&o));
}

/// `broker up` lets identity NAME use client ids NAME and NAME-*: issuing an
/// identity that is another plus "-…" (either order) is warned about, and
/// an unrelated one is not.
#[test]
fn issuing_an_identity_nested_in_another_is_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    ok(&run(mqttkit(dir.path()).args(["pki", "init"]), T));
    let issue = |name: &str| {
        let o = run(mqttkit(dir.path()).args(["pki", "issue", name]), T);
        stderr(ok(&o)).to_string()
    };
    let nested = issue("device-001-pump-3");
    assert!(
        nested.contains(
            "warning: identity 'device-001' may use the client ids of 'device-001-pump-3'"
        ),
        "{nested}"
    );
    let shorter = issue("device");
    assert!(
        shorter.contains("warning: identity 'device' may use the client ids of 'device-001"),
        "{shorter}"
    );
    let unrelated = issue("sensor-7");
    assert!(!unrelated.contains("warning"), "{unrelated}");
}

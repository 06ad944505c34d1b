//! `mqttkit iot` against moto_server (tests/py/moto_iot.py) on 127.0.0.1,
//! through AWS_ENDPOINT_URL with the real aws-sdk-iot. The AWS state is
//! checked independently with boto3; keys and certificates with openssl.
//! No call leaves the machine: every AWS endpoint is overridden, profiles and
//! instance metadata are switched off.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use serde_json::Value;

mod common;

const BIN: &str = env!("CARGO_BIN_EXE_mqttkit");

fn python() -> PathBuf {
    std::env::var_os("MQTTKIT_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python"))
}

/// A moto_server with AWS IoT on a free loopback port, killed on Drop.
struct Moto {
    child: Child,
    url: String,
    /// AWS config/credential files that do not exist, so nothing else is read.
    home: tempfile::TempDir,
}

impl Moto {
    fn start(patched: bool) -> Self {
        let harness = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/moto_iot.py");
        let mut cmd = Command::new(python());
        cmd.arg(harness)
            .stdin(Stdio::piped()) // closing it (our exit) also stops the server
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if !patched {
            cmd.env("MOTO_IOT_UNPATCHED", "1");
        }
        let mut child = cmd
            .spawn()
            .expect("the test venv's python with moto (bash scripts/test.sh installs it)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .strip_prefix("PORT ")
            .unwrap_or_else(|| panic!("moto harness did not start: {line:?}"))
            .trim()
            .to_string();
        Moto {
            child,
            url: format!("http://127.0.0.1:{port}"),
            home: tempfile::tempdir().unwrap(),
        }
    }

    /// The environment every AWS client in these tests gets.
    fn env(&self, cmd: &mut Command) {
        let none = self.home.path().join("none");
        cmd.env("AWS_ENDPOINT_URL", &self.url)
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_CONFIG_FILE", &none)
            .env("AWS_SHARED_CREDENTIALS_FILE", &none)
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_SESSION_TOKEN")
            .env_remove("MQTTKIT_OUT")
            .env_remove("RUST_LOG");
    }

    fn mqttkit(&self, args: &[&str], out: &Path) -> Output {
        let mut cmd = Command::new(BIN);
        cmd.args(args).stdin(Stdio::null());
        if args.get(1) != Some(&"list") {
            cmd.arg("--out").arg(out);
        }
        self.env(&mut cmd);
        cmd.output().unwrap()
    }

    /// The whole IoT state of the account, read with boto3.
    fn state(&self) -> Value {
        let script = r#"
import json, boto3
c = boto3.client("iot")
things = {}
for t in c.list_things()["things"]:
    name = t["thingName"]
    things[name] = {"attributes": t.get("attributes", {}),
                    "principals": c.list_thing_principals(thingName=name)["principals"]}
certs = {}
for cert in c.list_certificates()["certificates"]:
    arn = cert["certificateArn"]
    pols = c.list_attached_policies(target=arn)["policies"]
    certs[arn] = {"status": cert["status"],
                  "pem": c.describe_certificate(certificateId=cert["certificateId"])["certificateDescription"]["certificatePem"],
                  "policies": [p["policyName"] for p in pols]}
policies = {p["policyName"]: json.loads(c.get_policy(policyName=p["policyName"])["policyDocument"])
            for p in c.list_policies()["policies"]}
print(json.dumps({"things": things, "certs": certs, "policies": policies}))
"#;
        let mut cmd = Command::new(python());
        cmd.args(["-c", script]);
        self.env(&mut cmd);
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

impl Moto {
    /// The status of CA certificate `id` ("ACTIVE", ...), or "GONE".
    fn ca_status(&self, id: &str) -> String {
        let script = format!(
            r#"
import boto3
c = boto3.client("iot")
try:
    print(c.describe_ca_certificate(certificateId="{id}")["certificateDescription"]["status"])
except c.exceptions.ResourceNotFoundException:
    print("GONE")
"#
        );
        let mut cmd = Command::new(python());
        cmd.args(["-c", &script]);
        self.env(&mut cmd);
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "mqttkit failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The SHA-256 of a public key as openssl extracts it from `args`.
fn openssl_pubkey(args: &[&str], file: &Path) -> String {
    let out = Command::new("openssl")
        .args(args)
        .arg(file)
        .output()
        .expect("openssl is installed");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// cert.crt, private.key (PEM) and private_pkcs8.key (DER) hold one key pair.
fn assert_one_key_pair(dir: &Path) {
    let from_cert = openssl_pubkey(&["x509", "-noout", "-pubkey", "-in"], &dir.join("cert.crt"));
    let from_pem = openssl_pubkey(&["pkey", "-pubout", "-in"], &dir.join("private.key"));
    let from_der = openssl_pubkey(
        &["pkey", "-inform", "DER", "-pubout", "-in"],
        &dir.join("private_pkcs8.key"),
    );
    assert!(from_cert.contains("BEGIN PUBLIC KEY"));
    assert_eq!(from_cert, from_pem, "cert and PEM key differ");
    assert_eq!(from_cert, from_der, "cert and DER key differ");
    let pem = std::fs::read_to_string(dir.join("private.key")).unwrap();
    assert!(
        pem.starts_with("-----BEGIN PRIVATE KEY-----"),
        "PKCS#8 PEM: {pem:.40}"
    );
    for key in ["private.key", "private_pkcs8.key"] {
        let mode = std::fs::metadata(dir.join(key)).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o600, "{key}");
    }
}

fn as_list(v: &Value) -> Vec<String> {
    match v {
        Value::String(s) => vec![s.clone()],
        Value::Array(a) => a.iter().map(|x| x.as_str().unwrap().to_string()).collect(),
        _ => panic!("not a string or list: {v}"),
    }
}

/// The policy grants exactly connect-as-NAME, publish telemetry, subscribe/receive commands.
fn assert_least_privilege(doc: &Value, name: &str) {
    let mut grants = Vec::new();
    for st in doc["Statement"].as_array().unwrap() {
        assert_eq!(st["Effect"], "Allow");
        for action in as_list(&st["Action"]) {
            assert!(!action.contains('*'), "wildcard action {action}");
            for resource in as_list(&st["Resource"]) {
                assert!(!resource.contains('*'), "wildcard resource {resource}");
                let what = resource.split_once(":123456789012:").unwrap().1.to_string();
                grants.push(format!("{action} {what}"));
            }
        }
    }
    grants.sort();
    assert_eq!(
        grants,
        vec![
            format!("iot:Connect client/{name}"),
            format!("iot:Publish topic/devices/{name}/replies"),
            format!("iot:Publish topic/devices/{name}/telemetry"),
            format!("iot:Receive topic/devices/{name}/commands"),
            format!("iot:Subscribe topicfilter/devices/{name}/commands"),
        ]
    );
}

/// `plant.proto` and a schema mapping `plant/{site}/{device}/...` in `dir`.
fn plant_schema(dir: &Path) -> PathBuf {
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/proto/plant.proto"),
        dir.join("plant.proto"),
    )
    .unwrap();
    let schema = dir.join("schema.toml");
    std::fs::write(&schema, include_str!("proto/plant.toml")).unwrap();
    schema
}

#[test]
fn create_thing_with_a_schema_names_exactly_the_mapped_topics() {
    let moto = Moto::start(true);
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path();
    let schema = plant_schema(out);
    let schema = schema.to_str().unwrap();
    // A label the policy cannot name exactly: refused before any AWS call.
    let o = moto.mqttkit(
        &["iot", "create-thing", "p-1", "--yes", "--schema", schema],
        out,
    );
    assert!(!o.status.success());
    assert!(stderr(&o).contains("no value for {site}"), "{}", stderr(&o));
    assert!(moto.state()["things"].as_object().unwrap().is_empty());

    ok(&moto.mqttkit(
        &[
            "iot",
            "create-thing",
            "p-1",
            "--yes",
            "--schema",
            schema,
            "--label",
            "site=osaka",
        ],
        out,
    ));
    let doc = &moto.state()["policies"]["mqttkit-p-1"];
    let mut grants = Vec::new();
    for st in doc["Statement"].as_array().unwrap() {
        for action in as_list(&st["Action"]) {
            for resource in as_list(&st["Resource"]) {
                assert!(!resource.contains('*'), "wildcard resource {resource}");
                let what = resource.split_once(":123456789012:").unwrap().1.to_string();
                grants.push(format!("{action} {what}"));
            }
        }
    }
    grants.sort();
    assert_eq!(
        grants,
        [
            "iot:Connect client/p-1",
            "iot:Publish topic/plant/osaka/p-1/metrics",
            "iot:Receive topic/plant/osaka/p-1/commands",
            "iot:Subscribe topicfilter/plant/osaka/p-1/commands",
        ]
    );
}

#[test]
fn create_thing_rerun_and_delete() {
    let moto = Moto::start(true);
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path();

    let created: Value = serde_json::from_str(&ok(
        &moto.mqttkit(&["iot", "create-thing", "dev-1", "--yes", "--json"], out)
    ))
    .unwrap();
    assert_eq!(created["created"], true);
    let s = moto.state();
    let things = s["things"].as_object().unwrap();
    assert_eq!(things.len(), 1, "{s}");
    let principals = as_list(&things["dev-1"]["principals"]);
    assert_eq!(principals.len(), 1);
    let certs = s["certs"].as_object().unwrap();
    assert_eq!(certs.len(), 1);
    let cert = &certs[&principals[0]];
    assert_eq!(cert["status"], "ACTIVE");
    assert_eq!(
        as_list(&cert["policies"]),
        vec!["mqttkit-dev-1".to_string()]
    );
    assert_eq!(s["policies"].as_object().unwrap().len(), 1);
    assert_least_privilege(&s["policies"]["mqttkit-dev-1"], "dev-1");

    // Local files: the certificate AWS holds, our key, the Amazon root, a profile.
    let dir = out.join("iot/dev-1");
    assert_eq!(
        std::fs::read_to_string(dir.join("cert.crt")).unwrap(),
        cert["pem"].as_str().unwrap()
    );
    assert_one_key_pair(&dir);
    let fp = Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
        .arg(dir.join("AmazonRootCA1.pem"))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&fp.stdout).contains(
        "8E:CD:E6:88:4F:3D:87:B1:12:5B:A3:1A:C3:FC:B1:3D:70:16:DE:7F:57:CC:90:4F:E1:CB:97:C6:AE:98:19:6E"
    ));
    let profile = mqttkit::mqtt::Profile::load(out, "iot-dev-1").unwrap();
    // moto invents a new endpoint name on every DescribeEndpoint; check its shape.
    assert!(
        profile.host.ends_with("-ats.iot.us-east-1.amazonaws.com"),
        "{}",
        profile.host
    );
    assert_eq!(created["endpoint"].as_str(), Some(profile.host.as_str()));
    assert_eq!(profile.port, 8883);
    assert_eq!(profile.client_id.as_deref(), Some("dev-1"));
    assert_eq!(profile.device_id.as_deref(), Some("dev-1"));
    assert_eq!(profile.region.as_deref(), Some("us-east-1"));
    assert_eq!(
        profile.cert.as_deref(),
        Some(std::path::absolute(dir.join("cert.crt")).unwrap().as_path())
    );
    // The profile resolves into a TLS config with our identity (what `pub --profile iot-dev-1` does).
    let conn = mqttkit::mqtt::ConnectSpec {
        profile: Some("iot-dev-1".into()),
        ..mqttkit::mqtt::ConnectSpec::bare(out)
    };
    let ep = conn.resolve(mqttkit::mqtt::Role::Device("dev-1")).unwrap();
    assert!(ep.identity.is_some());

    // A second run reports the existing thing and adds no certificate.
    let again = moto.mqttkit(&["iot", "create-thing", "dev-1", "--yes"], out);
    ok(&again);
    assert!(
        stderr(&again).contains("already exists"),
        "{}",
        stderr(&again)
    );
    let s2 = moto.state();
    assert_eq!(s2["certs"].as_object().unwrap().len(), 1);
    assert_eq!(s2["things"].as_object().unwrap().len(), 1);

    let listed: Value =
        serde_json::from_str(&ok(&moto.mqttkit(&["iot", "list", "--json"], out))).unwrap();
    assert_eq!(listed[0]["thing"], "dev-1");
    assert_eq!(listed[0]["certificates"][0]["status"], "ACTIVE");
    assert!(listed[0]["certificates"][0]["not_after"].is_string());

    // Without a terminal, deletion needs --yes.
    let refused = moto.mqttkit(&["iot", "delete-thing", "dev-1"], out);
    assert!(!refused.status.success());
    assert!(stderr(&refused).contains("pass --yes"));
    assert_eq!(moto.state()["things"].as_object().unwrap().len(), 1);

    ok(&moto.mqttkit(&["iot", "delete-thing", "dev-1", "--yes", "--purge"], out));
    let s3 = moto.state();
    assert!(s3["things"].as_object().unwrap().is_empty(), "{s3}");
    assert!(s3["certs"].as_object().unwrap().is_empty(), "{s3}");
    assert!(s3["policies"].as_object().unwrap().is_empty(), "{s3}");
    assert!(!dir.exists());
    assert!(!out.join("profiles/iot-dev-1.toml").exists());
}

#[test]
fn aws_generated_key_is_stored_as_pkcs8() {
    let moto = Moto::start(true);
    let tmp = tempfile::tempdir().unwrap();
    ok(&moto.mqttkit(
        &[
            "iot",
            "create-thing",
            "dev-aws",
            "--aws-generated-key",
            "--yes",
        ],
        tmp.path(),
    ));
    // moto, like AWS, hands out a PKCS#1 RSA key; we store PKCS#8 PEM + DER of the same key.
    assert_one_key_pair(&tmp.path().join("iot/dev-aws"));
    let s = moto.state();
    assert_eq!(s["certs"].as_object().unwrap().len(), 1);
    ok(&moto.mqttkit(&["iot", "delete-thing", "dev-aws", "--yes"], tmp.path()));
    assert!(moto.state()["certs"].as_object().unwrap().is_empty());
    // Without --purge the local files stay.
    assert!(tmp.path().join("iot/dev-aws/cert.crt").exists());
}

#[test]
fn certificate_for_another_key_is_refused_and_rolled_back() {
    // Unpatched moto returns a certificate for a random key, ignoring the CSR.
    let moto = Moto::start(false);
    let tmp = tempfile::tempdir().unwrap();
    let out = moto.mqttkit(&["iot", "create-thing", "dev-x", "--yes"], tmp.path());
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("does not carry the public key"), "{err}");
    assert!(err.contains("rolled back"), "{err}");
    let s = moto.state();
    assert!(s["things"].as_object().unwrap().is_empty(), "{s}");
    assert!(s["certs"].as_object().unwrap().is_empty(), "{s}");
    assert!(s["policies"].as_object().unwrap().is_empty(), "{s}");
    assert!(!tmp.path().join("iot").exists());
}

/// Runs mqttkit with no credentials and AWS pointed at a closed loopback port.
fn offline(args: &[&str]) -> Output {
    let tmp = tempfile::tempdir().unwrap();
    let none = tmp.path().join("none");
    Command::new(BIN)
        .args(args)
        .current_dir(tmp.path())
        .env("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", &none)
        .env("AWS_SHARED_CREDENTIALS_FILE", &none)
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("AWS_WEB_IDENTITY_TOKEN_FILE")
        .env_remove("AWS_CONTAINER_CREDENTIALS_FULL_URI")
        .env_remove("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn invalid_name_fails_before_any_call() {
    // No credentials and no server: any AWS call would fail with a different error.
    for bad in ["bad name", "a/b", "ü"] {
        let out = offline(&["iot", "create-thing", bad, "--yes"]);
        assert!(!out.status.success());
        let err = stderr(&out);
        assert!(err.contains("AWS IoT thing-name rules"), "{err}");
        assert!(!err.contains("credentials"), "{err}");
        assert_eq!(err.trim().lines().count(), 1, "one-line error: {err}");
    }
    let out = offline(&[
        "iot",
        "create-thing",
        "ok-name",
        "--key-type",
        "ed25519",
        "--yes",
    ]);
    assert!(
        stderr(&out).contains("does not accept Ed25519"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn missing_credentials_say_how_to_set_them() {
    for args in [
        &["iot", "list"][..],
        &["iot", "create-thing", "dev-1", "--yes"],
    ] {
        let out = offline(args);
        assert!(!out.status.success());
        let err = stderr(&out);
        assert!(err.contains("no AWS credentials found"), "{err}");
        assert!(
            err.contains("AWS_PROFILE") && err.contains("AWS_ACCESS_KEY_ID"),
            "{err}"
        );
    }
}

#[test]
fn policy_conflict_rolls_back_only_what_this_run_made() {
    let moto = Moto::start(true);
    // Someone else's policy under the name create-thing would use.
    let mut cmd = Command::new(python());
    cmd.args([
        "-c",
        r#"import boto3; boto3.client("iot").create_policy(policyName="mqttkit-dev-p", policyDocument='{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"iot:Connect","Resource":"arn:aws:iot:us-east-1:123456789012:client/other"}]}')"#,
    ]);
    moto.env(&mut cmd);
    assert!(cmd.status().unwrap().success());
    let tmp = tempfile::tempdir().unwrap();
    let out = moto.mqttkit(&["iot", "create-thing", "dev-p", "--yes"], tmp.path());
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("--policy-name mqttkit-dev-p"), "{err}");
    let s = moto.state();
    assert!(s["things"].as_object().unwrap().is_empty(), "{s}");
    assert!(s["certs"].as_object().unwrap().is_empty(), "{s}");
    // The pre-existing policy is not ours to delete.
    assert_eq!(s["policies"].as_object().unwrap().len(), 1, "{s}");
}

/// The SHA-256 fingerprint openssl computes for a PEM certificate.
fn openssl_fingerprint(pem: &str) -> String {
    let tmp = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(tmp.path(), pem).unwrap();
    let out = openssl_pubkey(
        &["x509", "-noout", "-fingerprint", "-sha256", "-in"],
        tmp.path(),
    );
    assert!(out.contains("Fingerprint="), "{out}");
    out
}

/// `pki init --out OUT`: a local CA and its default identities.
fn pki_init(out: &Path) {
    ok(&Command::new(BIN)
        .args(["pki", "init", "--out"])
        .arg(out)
        .output()
        .unwrap());
}

/// The one certificate moto holds, as (ARN, its state).
fn only_cert(s: &Value) -> (String, Value) {
    let certs = s["certs"].as_object().unwrap();
    assert_eq!(certs.len(), 1, "{s}");
    let (arn, c) = certs.iter().next().unwrap();
    (arn.clone(), c.clone())
}

#[test]
fn local_ca_identity_works_on_aws_and_mosquitto() {
    let moto = Moto::start(true);
    let broker = common::Broker::start();
    let out = broker.out();

    let reg: Value = serde_json::from_str(&ok(
        &moto.mqttkit(&["iot", "register-ca", "--yes", "--json"], &out)
    ))
    .unwrap();
    assert_eq!(reg["registered"], true, "{reg}");
    assert_eq!(reg["mode"], "sni-only");
    let ca_id = reg["certificate_id"].as_str().unwrap().to_string();
    assert_eq!(moto.ca_status(&ca_id), "ACTIVE");
    assert!(out.join("iot/ca.json").exists());
    // Re-running is a no-op: same id, nothing registered.
    let again = moto.mqttkit(&["iot", "register-ca", "--yes", "--json"], &out);
    let again_v: Value = serde_json::from_str(&ok(&again)).unwrap();
    assert_eq!(again_v["registered"], false);
    assert_eq!(again_v["certificate_id"], ca_id.as_str());
    assert!(
        stderr(&again).contains("already registered"),
        "{}",
        stderr(&again)
    );

    ok(&moto.mqttkit(
        &["iot", "create-thing", "t1", "--ca", "local", "--yes"],
        &out,
    ));
    let s = moto.state();
    let (arn, cert) = only_cert(&s);
    let local_pem = std::fs::read_to_string(out.join("certs/t1.crt")).unwrap();
    assert_eq!(
        openssl_fingerprint(cert["pem"].as_str().unwrap()),
        openssl_fingerprint(&local_pem)
    );
    assert_eq!(cert["status"], "ACTIVE");
    assert_eq!(as_list(&cert["policies"]), vec!["mqttkit-t1".to_string()]);
    assert_eq!(as_list(&s["things"]["t1"]["principals"]), vec![arn]);
    assert_least_privilege(&s["policies"]["mqttkit-t1"], "t1");
    // The IoT profile's files are the local identity.
    assert_eq!(
        std::fs::read_to_string(out.join("iot/t1/cert.crt")).unwrap(),
        local_pem
    );
    assert_one_key_pair(&out.join("iot/t1"));

    // The same certificate and key connect to the local mosquitto (OpenSSL client).
    common::mosquitto_pub(&broker, "t1", "devices/t1/telemetry", "hello");

    // `pki revoke` here, then `iot revoke-sync`: REVOKED in AWS too (once).
    let revoked = moto.mqttkit(&["pki", "revoke", "t1"], &out);
    ok(&revoked);
    assert!(
        stderr(&revoked).contains("iot revoke-sync"),
        "{}",
        stderr(&revoked)
    );
    let synced: Value =
        serde_json::from_str(&ok(&moto.mqttkit(&["iot", "revoke-sync", "--json"], &out))).unwrap();
    assert_eq!(synced[0]["name"], "t1", "{synced}");
    assert_eq!(synced[0]["was"], "ACTIVE", "{synced}");
    assert_eq!(only_cert(&moto.state()).1["status"], "REVOKED");
    let resynced: Value =
        serde_json::from_str(&ok(&moto.mqttkit(&["iot", "revoke-sync", "--json"], &out))).unwrap();
    assert_eq!(resynced[0]["was"], "REVOKED", "{resynced}");

    // While t1's certificate is registered from the CA, the CA cannot go.
    let refused = moto.mqttkit(&["iot", "deregister-ca", "--yes"], &out);
    assert!(!refused.status.success());
    let err = stderr(&refused);
    assert!(err.contains("still has 1 registered certificate"), "{err}");
    assert!(err.contains("(thing t1)"), "{err}");
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error")).collect();
    assert_eq!(errors.len(), 1, "one-line error: {err}");
    assert_eq!(moto.ca_status(&ca_id), "ACTIVE");

    ok(&moto.mqttkit(&["iot", "delete-thing", "t1", "--yes"], &out));
    let s = moto.state();
    assert!(s["things"].as_object().unwrap().is_empty(), "{s}");
    assert!(s["certs"].as_object().unwrap().is_empty(), "{s}");
    assert!(s["policies"].as_object().unwrap().is_empty(), "{s}");
    assert_eq!(moto.ca_status(&ca_id), "ACTIVE", "the CA stays");
    assert!(out.join("certs/t1.crt").exists(), "local files stay");

    ok(&moto.mqttkit(&["iot", "deregister-ca", "--yes"], &out));
    assert_eq!(moto.ca_status(&ca_id), "GONE");
    assert!(!out.join("iot/ca.json").exists());
}

#[test]
fn default_mode_registers_with_a_verification_certificate() {
    let moto = Moto::start(true);
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    pki_init(&out);
    let reg: Value = serde_json::from_str(&ok(&moto.mqttkit(
        &["iot", "register-ca", "--mode", "default", "--yes", "--json"],
        &out,
    )))
    .unwrap();
    assert_eq!(reg["mode"], "default");
    let id = reg["certificate_id"].as_str().unwrap();
    assert_eq!(moto.ca_status(id), "ACTIVE");
    // An existing local identity (pki init's device-001) is reused, not re-issued.
    let before = std::fs::read_to_string(out.join("certs/device-001.crt")).unwrap();
    ok(&moto.mqttkit(
        &[
            "iot",
            "create-thing",
            "device-001",
            "--ca",
            "local",
            "--yes",
        ],
        &out,
    ));
    let (_, cert) = only_cert(&moto.state());
    assert_eq!(cert["pem"].as_str().unwrap(), before);
}

#[test]
fn local_ca_without_a_ca_fails_before_any_call() {
    let out = offline(&["iot", "create-thing", "t9", "--ca", "local", "--yes"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("no CA at"), "{err}");
    assert!(err.contains("pki init"), "{err}");
    assert!(!err.contains("credentials"), "{err}");
}

#[test]
fn local_ca_without_register_ca_registers_without_a_ca() {
    let moto = Moto::start(true);
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    pki_init(&out);
    let o = moto.mqttkit(
        &["iot", "create-thing", "t2", "--ca", "local", "--yes"],
        &out,
    );
    ok(&o);
    assert!(stderr(&o).contains("without a CA"), "{}", stderr(&o));
    let (_, cert) = only_cert(&moto.state());
    assert_eq!(cert["status"], "ACTIVE");
    let local = std::fs::read_to_string(out.join("certs/t2.crt")).unwrap();
    assert_eq!(
        openssl_fingerprint(cert["pem"].as_str().unwrap()),
        openssl_fingerprint(&local)
    );
    // A certificate of another CA under OUT/certs is refused, and the thing rolled back.
    let other = tmp.path().join("other");
    pki_init(&other);
    for ext in ["crt", "key"] {
        std::fs::copy(
            other.join(format!("certs/device-001.{ext}")),
            out.join(format!("certs/t3.{ext}")),
        )
        .unwrap();
    }
    let o = moto.mqttkit(
        &["iot", "create-thing", "t3", "--ca", "local", "--yes"],
        &out,
    );
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("not signed by the local CA"),
        "{}",
        stderr(&o)
    );
    let s = moto.state();
    assert!(s["things"].get("t3").is_none(), "{s}");
    assert_eq!(s["certs"].as_object().unwrap().len(), 1, "{s}");

    // revoke-sync needs a registered CA: one line saying how to get one.
    let o = moto.mqttkit(&["iot", "revoke-sync"], &out);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("iot register-ca"), "{}", stderr(&o));
}

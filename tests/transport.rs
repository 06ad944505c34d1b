//! The AWS IoT transports of the shared connection layer:
//! - `--transport alpn` offers ALPN `x-amzn-mqtt-ca` (observed by a local rustls server);
//! - `--transport wss` speaks MQTT over TLS WebSocket to a real mosquitto
//!   `protocol websockets` listener that requires client certificates;
//! - the SigV4 presigned URL equals botocore's for fixed credentials and time.
//!
//! Everything listens on 127.0.0.1 and is killed on Drop.

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use common::free_port;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

const BIN: &str = env!("CARGO_BIN_EXE_mqttkit");

fn python() -> PathBuf {
    std::env::var_os("MQTTKIT_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python"))
}

/// A child process killed (and reaped) on Drop, also when a test panics.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `mqttkit pki init` in a fresh directory: CA, broker (localhost) and client certs.
fn pki() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["pki", "init", "--out"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let certs = dir.path().join("certs");
    (dir, certs)
}

fn conn_flags(certs: &Path, port: u16, transport: &str) -> Vec<String> {
    let p = |n: &str| certs.join(n).display().to_string();
    vec![
        "-H".into(),
        "localhost".into(),
        "-p".into(),
        port.to_string(),
        "--cafile".into(),
        p("ca.crt"),
        "--cert".into(),
        p("device-001.crt"),
        "--key".into(),
        p("device-001.key"),
        "--transport".into(),
        transport.into(),
        "--device-id".into(),
        "device-001".into(),
    ]
}

/// Runs `mqttkit pub telemetry` against a TLS server that records the ALPN
/// protocols the client offers in its ClientHello; returns them.
async fn offered_alpn(transport: &str) -> Vec<Vec<u8>> {
    let (_dir, certs) = pki();
    let chain = vec![CertificateDer::from_pem_file(certs.join("broker.crt")).unwrap()];
    let key = PrivateKeyDer::from_pem_file(certs.join("broker.key")).unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .unwrap();
    config.alpn_protocols = vec![b"x-amzn-mqtt-ca".to_vec()];
    let config = Arc::new(config);

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut client = Proc(
        Command::new(BIN)
            .args(["pub", "telemetry", "--count", "1"])
            .args(conn_flags(&certs, port, transport))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let observe = async {
        let (tcp, _) = listener.accept().await.unwrap();
        let acceptor =
            tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp);
        let start = acceptor.await.unwrap();
        let offered: Vec<Vec<u8>> = start
            .client_hello()
            .alpn()
            .map(|it| it.map(<[u8]>::to_vec).collect())
            .unwrap_or_default();
        // Finish the handshake too: the client must accept what it offered.
        let tls = start.into_stream(config.clone()).await.unwrap();
        let negotiated = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
        if !offered.is_empty() {
            assert_eq!(negotiated.as_deref(), Some(&b"x-amzn-mqtt-ca"[..]));
        }
        offered
    };
    let offered = tokio::time::timeout(Duration::from_secs(20), observe)
        .await
        .expect("the client connected within 20 s");
    let _ = client.0.kill();
    offered
}

#[tokio::test(flavor = "multi_thread")]
async fn alpn_transport_offers_x_amzn_mqtt_ca() {
    let offered = offered_alpn("alpn").await;
    assert_eq!(offered, vec![b"x-amzn-mqtt-ca".to_vec()]);
    // Control: plain TLS offers no ALPN, so the observation above is real.
    assert!(offered_alpn("tls").await.is_empty());
}

/// mosquitto with a TLS listener and a TLS WebSocket listener, both requiring
/// a client certificate from our CA. Returns (broker, tls port, wss port, log).
fn mosquitto(dir: &Path, certs: &Path) -> (Proc, u16, u16, PathBuf) {
    let (tls_port, ws_port) = (free_port(), free_port());
    let log = dir.join("mosquitto.log");
    let tls = |port: u16, ws: bool| {
        format!(
            "listener {port} 127.0.0.1\n{}cafile {ca}\ncertfile {crt}\nkeyfile {key}\nrequire_certificate true\n",
            if ws { "protocol websockets\n" } else { "" },
            ca = certs.join("ca.crt").display(),
            crt = certs.join("broker.crt").display(),
            key = certs.join("broker.key").display(),
        )
    };
    // As root, mosquitto would switch to user `mosquitto`, who cannot read our 0600 keys.
    let user = if nix::unistd::Uid::effective().is_root() {
        "user root\n"
    } else {
        ""
    };
    let conf = format!(
        "{user}allow_anonymous true\nlog_dest file {}\nlog_type all\npersistence false\n{}{}",
        log.display(),
        tls(tls_port, false),
        tls(ws_port, true)
    );
    let conf_path = dir.join("mosquitto.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let broker = Proc(
        Command::new("mosquitto")
            .arg("-c")
            .arg(&conf_path)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("mosquitto is installed (scripts/test.sh installs it)"),
    );
    for port in [tls_port, ws_port] {
        wait_until(Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
    }
    (broker, tls_port, ws_port, log)
}

fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < limit,
            "condition not met within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// mosquitto_sub on the plain TLS listener, waiting for one telemetry message.
fn subscriber(certs: &Path, tls_port: u16, log: &Path) -> Proc {
    let sub = Proc(
        Command::new("mosquitto_sub")
            .args(["-h", "localhost", "-p", &tls_port.to_string()])
            .arg("--cafile")
            .arg(certs.join("ca.crt"))
            .arg("--cert")
            .arg(certs.join("server.crt"))
            .arg("--key")
            .arg(certs.join("server.key"))
            .args([
                "-t",
                "devices/+/telemetry",
                "-C",
                "1",
                "-W",
                "30",
                "-v",
                "-q",
                "1",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    // Publish only once the subscription is in place.
    wait_until(Duration::from_secs(10), || {
        std::fs::read_to_string(log).is_ok_and(|l| l.contains("Sending SUBACK"))
    });
    sub
}

fn received(mut sub: Proc) -> String {
    let status = sub.0.wait().unwrap();
    let mut out = Vec::new();
    sub.0.stdout.take().unwrap().read_to_end(&mut out).unwrap();
    assert!(status.success(), "mosquitto_sub got no message");
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn wss_transport_publishes_through_mosquitto_websockets() {
    let (dir, certs) = pki();
    let (_broker, tls_port, ws_port, log) = mosquitto(dir.path(), &certs);
    let sub = subscriber(&certs, tls_port, &log);
    let out = Command::new(BIN)
        .args(["pub", "telemetry", "--count", "1"])
        .args(conn_flags(&certs, ws_port, "wss"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pub over wss failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = received(sub);
    assert!(got.starts_with("devices/device-001/telemetry "), "{got}");
    // The client came in through the WebSocket listener, not the TLS one.
    let log_text = std::fs::read_to_string(&log).unwrap();
    assert!(
        log_text.contains(&format!("on port {ws_port}")),
        "no connection on the websockets port in:\n{log_text}"
    );
}

#[test]
fn wss_with_a_region_signs_the_url_and_still_connects() {
    // A profile with a region makes the connection SigV4-signed (as for AWS
    // IoT); mosquitto ignores the query, so this proves the signed upgrade
    // request is well-formed and credentials come from the AWS chain.
    let (dir, certs) = pki();
    let (_broker, tls_port, ws_port, log) = mosquitto(dir.path(), &certs);
    let profile = format!(
        "host = \"localhost\"\nport = {ws_port}\ntransport = \"wss\"\ncafile = \"{ca}\"\ncert = \"{c}\"\nkey = \"{k}\"\ndevice_id = \"device-001\"\nregion = \"us-east-1\"\n",
        ca = certs.join("ca.crt").display(),
        c = certs.join("device-001.crt").display(),
        k = certs.join("device-001.key").display(),
    );
    std::fs::write(dir.path().join("profiles/aws-like.toml"), profile).unwrap();
    let sub = subscriber(&certs, tls_port, &log);
    let out = Command::new(BIN)
        .args([
            "-vv",
            "pub",
            "telemetry",
            "--count",
            "1",
            "--profile",
            "aws-like",
            "--out",
        ])
        .arg(dir.path())
        .env("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
        .env(
            "AWS_SECRET_ACCESS_KEY",
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
        )
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", dir.path().join("none"))
        .env("AWS_SHARED_CREDENTIALS_FILE", dir.path().join("none"))
        .env_remove("AWS_PROFILE")
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "pub failed: {stderr}");
    assert!(
        stderr.contains("SigV4-presigned the connection to localhost:"),
        "{stderr}"
    );
    assert!(received(sub).starts_with("devices/device-001/telemetry "));
}

/// botocore's SigV4QueryAuth for the same request, fixed time and credentials.
fn botocore_presign(host: &str, ak: &str, sk: &str, region: &str) -> String {
    let script = r#"
import sys, datetime
from unittest import mock
import botocore.auth
from botocore.auth import SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
host, ak, sk, region = sys.argv[1:5]
req = AWSRequest(method="GET", url=f"https://{host}/mqtt")
fixed = datetime.datetime(2015, 8, 30, 12, 36, 0)
with mock.patch.object(botocore.auth, "get_current_datetime", return_value=fixed):
    SigV4QueryAuth(Credentials(ak, sk), "iotdevicegateway", region, expires=86400).add_auth(req)
print(req.prepare().url)
"#;
    let out = Command::new(python())
        .args(["-c", script, host, ak, sk, region])
        .output()
        .expect("the test venv's python (bash scripts/test.sh creates it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn query_pairs(url_or_query: &str) -> Vec<(String, String)> {
    let q = url_or_query
        .split_once('?')
        .map_or(url_or_query, |(_, q)| q);
    let mut pairs: Vec<(String, String)> = q
        .split('&')
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap();
            (k.to_string(), v.to_string())
        })
        .collect();
    pairs.sort();
    pairs
}

#[test]
fn sigv4_presigned_url_matches_botocore() {
    use aws_credential_types::Credentials;
    use mqttkit::mqtt::sigv4;
    let (ak, sk) = ("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY");
    let time = SystemTime::UNIX_EPOCH + Duration::from_secs(1_440_938_160); // 2015-08-30T12:36:00Z
    for (host, region) in [
        (
            "a1b2c3d4e5f6g7-ats.iot.us-east-1.amazonaws.com",
            "us-east-1",
        ),
        (
            "example-ats.iot.eu-central-1.amazonaws.com:8443",
            "eu-central-1",
        ),
    ] {
        let expected = botocore_presign(host, ak, sk, region);
        let ours = sigv4::presigned_url(
            &Credentials::new(ak, sk, None, None, "test"),
            host,
            region,
            time,
        )
        .unwrap();
        assert!(ours.starts_with(&format!("wss://{host}/mqtt?")), "{ours}");
        assert_eq!(query_pairs(&ours), query_pairs(&expected), "{host}");
        assert!(ours.contains("X-Amz-Date=20150830T123600Z"));

        // Temporary credentials: same signature, token appended after signing
        // (AWS IoT's rule for WebSocket connections).
        let token = "FQoGZXIvYXdzE/token+with=chars";
        let with_token = sigv4::presigned_url(
            &Credentials::new(ak, sk, Some(token.into()), None, "test"),
            host,
            region,
            time,
        )
        .unwrap();
        let mut expected_pairs = query_pairs(&expected);
        expected_pairs.push((
            "X-Amz-Security-Token".into(),
            "FQoGZXIvYXdzE%2Ftoken%2Bwith%3Dchars".into(),
        ));
        expected_pairs.sort();
        assert_eq!(query_pairs(&with_token), expected_pairs);
    }
}

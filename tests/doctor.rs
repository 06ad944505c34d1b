//! `doctor` against a real mosquitto: each failure named with its fix.

mod common;

use std::time::Duration;

use common::{ok, run, stdout, Broker, BrokerOptions};

const T: Duration = Duration::from_secs(60);

#[test]
fn healthy_broker_passes_every_step() {
    let broker = Broker::start();
    for args in [vec!["doctor"], vec!["doctor", "--server"]] {
        let o = ok(&run(broker.mqttkit().args(&args), T)).clone();
        let text = stdout(&o);
        for step in [
            "configuration",
            "name resolution",
            "TCP connect",
            "TLS handshake",
            "MQTT CONNECT",
            "subscribe permission",
            "publish permission",
        ] {
            assert!(
                text.lines()
                    .any(|l| l.starts_with("[ ok ]") && l.contains(step)),
                "{step}: {text}"
            );
        }
        assert!(text.contains("delivered to the peer identity"), "{text}");
    }
    let o = ok(&run(broker.mqttkit().args(["doctor", "--json"]), T)).clone();
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(v["ok"], true);
    assert_eq!(v["steps"].as_array().unwrap().len(), 8);
}

#[test]
fn a_name_missing_from_the_certificate_is_named() {
    let broker = Broker::start_with(BrokerOptions {
        bind: Some("127.0.0.2".into()),
        ..Default::default()
    });
    let o = run(broker.mqttkit().args(["doctor"]), T);
    assert!(!o.status.success());
    let text = stdout(&o);
    let line = text
        .lines()
        .find(|l| l.starts_with("[FAIL]"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(line.contains("TLS handshake"), "{text}");
    assert!(line.contains("not valid for '127.0.0.2'"), "{text}");
    assert!(
        line.contains("localhost") && line.contains("127.0.0.1"),
        "names present missing: {text}"
    );
    // Only the broker certificate is reissued, from the same CA, keeping its names.
    let fix = text
        .lines()
        .find(|l| l.contains("fix:"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        fix.contains("fix: connect by one of those names, or reissue only the broker certificate"),
        "{text}"
    );
    assert!(
        fix.contains("`mqttkit pki issue broker --server --host localhost"),
        "{text}"
    );
    assert!(
        fix.contains("--host 127.0.0.1") && fix.contains("--host 127.0.0.2 --force`"),
        "{text}"
    );
    assert!(
        fix.contains("mqttkit broker down && mqttkit broker up"),
        "{text}"
    );
    assert!(!text.contains("pki init"), "{text}");

    // Running the fix as printed repairs it: same CA, so the device certificate still works.
    let ca = std::fs::read(broker.certs().join("ca.crt")).unwrap();
    let command = fix
        .split('`')
        .find(|c| c.starts_with("mqttkit pki issue"))
        .unwrap();
    let args: Vec<&str> = command.split_whitespace().skip(1).collect();
    ok(&run(broker.mqttkit().args(&args), T));
    ok(&run(broker.mqttkit().args(["broker", "down"]), T));
    broker.up();
    assert_eq!(std::fs::read(broker.certs().join("ca.crt")).unwrap(), ca);
    ok(&run(broker.mqttkit().args(["doctor"]), T));
}

#[test]
fn a_client_certificate_from_another_ca_is_reported_as_rejected() {
    let broker = Broker::start();
    let other = tempfile::tempdir().unwrap();
    ok(&run(
        std::process::Command::new(common::bin())
            .current_dir(other.path())
            .args(["pki", "init"]),
        T,
    ));
    let certs = other.path().join("out/certs");
    let o = doctor_with(&broker, &certs, "device-001", "device-001", &["doctor"]);
    assert!(!o.status.success());
    let text = stdout(&o);
    assert!(text.contains("NOT signed by --cafile's CA"), "{text}");
    let fail = first_failure(&text);
    assert!(
        fail.contains("MQTT CONNECT") && fail.contains("rejected the client certificate"),
        "{text}"
    );
}

#[test]
fn a_closed_port_says_nothing_is_listening() {
    let broker = Broker::start_with(BrokerOptions {
        no_broker: true,
        ..Default::default()
    });
    let port = common::free_port();
    let o = run(
        broker
            .mqttkit()
            .args(["doctor", "--host", "127.0.0.1", "--port", &port.to_string()]),
        T,
    );
    assert!(!o.status.success());
    let text = stdout(&o);
    let fail = first_failure(&text);
    assert!(
        fail.contains("TCP connect")
            && fail.contains(&format!("nothing is listening on 127.0.0.1:{port}")),
        "{text}"
    );
    assert!(text.contains("mqttkit broker up"), "{text}");
}

#[test]
fn a_key_that_does_not_match_fails_before_connecting() {
    let broker = Broker::start_with(BrokerOptions {
        no_broker: true,
        ..Default::default()
    });
    let certs = broker.certs();
    let o = doctor_with(&broker, &certs, "device-001", "server", &["doctor"]);
    assert!(!o.status.success());
    let text = stdout(&o);
    assert!(text.starts_with("[FAIL] configuration"), "{text}");
    assert!(text.contains("are not a pair"), "{text}");
}

#[test]
fn a_certificate_for_another_device_is_refused_before_connecting() {
    let broker = Broker::start_with(BrokerOptions {
        clients: vec!["device-002".into()],
        no_broker: true,
        ..Default::default()
    });
    let certs = broker.certs();
    // device-001's certificate acting as device-002: the broker's ACL keys on the CN
    // and would silently drop everything.
    let o = doctor_with(
        &broker,
        &certs,
        "device-001",
        "device-001",
        &["doctor", "--device-id", "device-002"],
    );
    assert!(!o.status.success());
    let text = stdout(&o);
    assert!(text.starts_with("[FAIL] configuration"), "{text}");
    assert!(
        text.contains("is device 'device-001'") && text.contains("mqttkit pki issue device-002"),
        "{text}"
    );
}

#[test]
fn topics_the_acl_denies_fail_the_permission_steps() {
    // `server` is not a server identity on this broker: the ACL gives it only device topics.
    let broker = Broker::start_with(BrokerOptions {
        up_args: vec!["--server-identity".into(), "ops".into()],
        ..Default::default()
    });
    let o = run(broker.mqttkit().args(["doctor", "--server"]), T);
    assert!(!o.status.success());
    let text = stdout(&o);
    assert!(
        text.lines()
            .any(|l| l.starts_with("[ ok ]") && l.contains("MQTT CONNECT")),
        "{text}"
    );
    let fail = first_failure(&text);
    assert!(
        fail.contains("subscribe permission") && fail.contains("devices/+/telemetry"),
        "{text}"
    );
    assert!(text.contains("ACL"), "{text}");
}

/// The first `[FAIL]` line of doctor's report.
fn first_failure(text: &str) -> &str {
    text.lines()
        .find(|l| l.starts_with("[FAIL]"))
        .unwrap_or_else(|| panic!("no failing step in:\n{text}"))
}

/// `mqttkit <args> --cert CERTS/CERT.crt --key CERTS/KEY.key` in the broker's directory.
fn doctor_with(
    broker: &Broker,
    certs: &std::path::Path,
    cert: &str,
    key: &str,
    args: &[&str],
) -> std::process::Output {
    run(
        broker
            .mqttkit()
            .args(args)
            .arg("--cert")
            .arg(certs.join(format!("{cert}.crt")))
            .arg("--key")
            .arg(certs.join(format!("{key}.key"))),
        T,
    )
}

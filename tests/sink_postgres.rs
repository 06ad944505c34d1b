//! `sub telemetry --sink postgres://...` into a real PostgreSQL (Debian's
//! `postgresql` package) started on a free loopback port.

mod common;
mod sink_support;

use common::Broker;
use std::process::Command;
use std::time::Duration;

use sink_support::{kill_restart_flow, Postgres, SinkProc};

#[test]
fn postgres_keeps_every_row_once_across_sigkill() {
    let pg = Postgres::start();
    pg.psql("postgres", "CREATE DATABASE telemetry");
    let broker = Broker::start();
    let url = pg.url("telemetry");
    kill_restart_flow(&broker, &url, 5000, &[]);

    // Every measurement is in its column; the time index exists.
    let n = pg.psql(
        "telemetry",
        "SELECT count(*), count(DISTINCT seq), min(seq), max(seq) FROM telemetry \
         WHERE device_id = 'device-001' AND time IS NOT NULL AND received_unix_nano >= time_unix_nano - 60000000000 \
         AND status <> '' AND battery_v > 0",
    );
    assert_eq!(n, "5000|5000|0|4999");
    let idx = pg.psql(
        "telemetry",
        "SELECT indexname FROM pg_indexes WHERE tablename = 'telemetry' ORDER BY 1",
    );
    assert!(
        idx.contains("telemetry_time_idx") && idx.contains("telemetry_pkey"),
        "{idx}"
    );
}

/// A server that admits TLS connections only: `sslmode=require` with the
/// private CA as `sslrootcert` stores every row; without TLS, or with a CA
/// that did not sign the server's certificate, it is a one-line error.
#[test]
fn postgres_over_tls_verifies_the_server() {
    let broker = Broker::start();
    let issue = common::run(
        broker
            .mqttkit()
            .args(["pki", "issue", "pgdb", "--server", "--host", "127.0.0.1"]),
        Duration::from_secs(30),
    );
    common::ok(&issue);
    let certs = broker.certs();
    let pg = Postgres::start_with_tls(Some((&certs.join("pgdb.crt"), &certs.join("pgdb.key"))));
    pg.psql("postgres", "CREATE DATABASE telemetry");
    let plain = pg.url("telemetry");
    let ca = certs.join("ca.crt");
    let tls = format!("{plain}?sslmode=verify-full&sslrootcert={}", ca.display());

    let mut sink = SinkProc::start(&broker, &tls, &["--count", "300"], &[]);
    sink.wait_subscribed();
    let publish = common::run(
        broker
            .mqttkit()
            .args(["pub", "telemetry", "--count", "300"]),
        Duration::from_secs(60),
    );
    common::ok(&publish);
    let status = common::wait_output(
        std::mem::replace(&mut sink.child, Command::new("true").spawn().unwrap()),
        Duration::from_secs(60),
        "sink",
    )
    .status;
    assert!(status.success(), "{}", sink.stderr());
    assert_eq!(
        pg.psql("telemetry", "SELECT count(DISTINCT seq) FROM telemetry"),
        "300"
    );

    // Plaintext is refused by the server; the error says how to ask for TLS.
    let o = common::run(
        broker.mqttkit().args(["sink", "stats", &plain]),
        Duration::from_secs(30),
    );
    let err = common::stderr(&o);
    assert!(!o.status.success());
    assert!(err.contains("sslmode=require"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");

    // A CA that did not sign the server's certificate.
    common::ok(&common::run(
        broker.mqttkit().args(["pki", "init", "--out", "other"]),
        Duration::from_secs(30),
    ));
    let foreign = format!(
        "{plain}?sslmode=require&sslrootcert={}",
        broker.path().join("other/certs/ca.crt").display()
    );
    let o = common::run(
        broker.mqttkit().args(["sink", "stats", &foreign]),
        Duration::from_secs(30),
    );
    let err = common::stderr(&o);
    assert!(!o.status.success());
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

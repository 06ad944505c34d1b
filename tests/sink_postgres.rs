//! `sub telemetry --sink postgres://...` into a real PostgreSQL (Debian's
//! `postgresql` package) started on a free loopback port.

mod common;
mod sink_support;

use common::Broker;
use std::process::Command;
use std::time::Duration;

use sink_support::{kill_restart_flow, poison_flow, Postgres, SinkProc, POISONER};

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

/// The poison flow into PostgreSQL: NaN and +Inf are stored natively; a
/// row the server itself refuses (an operator's CHECK constraint) is found
/// by writing the batch row by row and quarantined, the rest of the batch lands.
#[test]
fn postgres_quarantines_poison_and_stores_nan_natively() {
    let pg = Postgres::start();
    pg.psql("postgres", "CREATE DATABASE telemetry");
    let broker = sink_support::poison_broker();
    let url = pg.url("telemetry");
    // The sink's schema first, then the operator's rule on it.
    sink_support::stats(&broker, &url, &[]);
    pg.psql(
        "telemetry",
        "ALTER TABLE telemetry ADD CONSTRAINT plausible_rssi CHECK (rssi_dbm > -500)",
    );
    let implausible = sink_support::telemetry_bytes(50, |t| t.rssi_dbm = -9999);
    poison_flow(&broker, &url, &[], Some(implausible));

    let nan = pg.psql(
        "telemetry",
        &format!("SELECT temperature_c::text, humidity_pct::text FROM telemetry WHERE device_id = '{POISONER}' ORDER BY seq"),
    );
    assert_eq!(nan, "NaN|Infinity\nNaN|Infinity");
    let reasons = pg.psql(
        "telemetry",
        "SELECT reason FROM rejected ORDER BY received_unix_nano",
    );
    assert_eq!(reasons.lines().count(), 8, "{reasons}");
    assert_eq!(
        reasons
            .matches("violates check constraint \"plausible_rssi\"")
            .count(),
        1,
        "{reasons}"
    );
    let big = pg.psql(
        "telemetry",
        "SELECT size > 300 * 1024, length(payload), payload_truncated, length(payload_sha256) FROM rejected WHERE reason LIKE '%larger than any%'",
    );
    assert_eq!(big, ["t|1024|t|64"; 3].join("\n"));
}

/// A port that accepts and never answers: the sink gives up after the
/// default connect_timeout of 10 s (or the URL's) with a one-line error.
#[test]
fn postgres_that_never_answers_times_out() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    // Accept and hold every connection, never writing a byte.
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in listener.incoming() {
            held.push(s);
        }
    });
    let broker = Broker::start_with(common::BrokerOptions {
        no_broker: true,
        ..Default::default()
    });
    for (query, limit) in [("", 10), ("?connect_timeout=1", 1)] {
        let url = format!("postgres://postgres:hunter2@127.0.0.1:{port}/db{query}");
        let started = std::time::Instant::now();
        let o = common::run(
            broker.mqttkit().args(["sink", "stats", &url]),
            Duration::from_secs(30),
        );
        let took = started.elapsed().as_secs_f64();
        let err = common::stderr(&o);
        assert!(!o.status.success(), "{err}");
        assert!(
            err.contains(&format!("no answer within {limit} s")),
            "{err}"
        );
        assert!(
            took >= limit as f64 && took < limit as f64 + 5.0,
            "{took} s: {err}"
        );
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(!err.contains("hunter2"), "{err}");
    }
}

/// A server that wants a password: PGPASSWORD or a 0600 password file
/// (`?passfile=`) supply it, so the URL needs none; a password file others
/// can read is ignored, as libpq does; the password is never printed.
#[test]
fn postgres_password_from_pgpassword_or_passfile() {
    let pg = Postgres::start();
    pg.psql("postgres", "CREATE DATABASE telemetry");
    pg.require_password("s3cret-pw");
    let broker = Broker::start_with(common::BrokerOptions {
        no_broker: true,
        ..Default::default()
    });
    let url = pg.url("telemetry");
    let stats = |url: &str, env: &[(&str, &str)]| {
        let mut c = broker.mqttkit();
        c.args(["sink", "stats", url]).env_remove("PGPASSWORD");
        c.env("HOME", broker.path()).envs(env.iter().copied());
        common::run(&mut c, Duration::from_secs(30))
    };
    let o = stats(&url, &[]);
    assert!(!o.status.success(), "no password, yet connected");
    assert!(
        common::stderr(&o).contains("password"),
        "{}",
        common::stderr(&o)
    );

    let o = stats(&url, &[("PGPASSWORD", "s3cret-pw")]);
    assert!(o.status.success(), "{}", common::stderr(&o));

    let passfile = broker.path().join("pgpass");
    std::fs::write(
        &passfile,
        format!("127.0.0.1:{}:telemetry:postgres:s3cret-pw\n", pg.port),
    )
    .unwrap();
    let set_mode = |mode| {
        std::fs::set_permissions(
            &passfile,
            std::os::unix::fs::PermissionsExt::from_mode(mode),
        )
        .unwrap()
    };
    set_mode(0o600);
    let with_file = format!("{url}?passfile={}", passfile.display());
    let o = stats(&with_file, &[]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    let text = common::stdout(&o) + &common::stderr(&o);
    assert!(!text.contains("s3cret"), "{text}");

    set_mode(0o644);
    let o = stats(&with_file, &[]);
    let err = common::stderr(&o);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("readable by group or others; ignored"),
        "{err}"
    );
    assert!(!err.contains("s3cret"), "{err}");
}

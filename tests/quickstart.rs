//! `quickstart` on a fresh directory: certificates, a native mosquitto and a
//! verified telemetry + command round trip.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{ok, run, stdout};

struct Down<'a>(&'a std::path::Path);

impl Drop for Down<'_> {
    fn drop(&mut self) {
        let _ = run(
            Command::new(common::bin())
                .current_dir(self.0)
                .args(["broker", "down"]),
            Duration::from_secs(30),
        );
    }
}

#[test]
fn quickstart_from_nothing_to_a_round_trip_then_reuses_the_ca() {
    let dir = tempfile::tempdir().unwrap();
    let _down = Down(dir.path());
    let port = common::free_port().to_string();
    let args = [
        "quickstart",
        "--runtime",
        "native",
        "--bind",
        "127.0.0.1",
        "--port",
        &port,
    ];
    let o = ok(&run(
        Command::new(common::bin())
            .current_dir(dir.path())
            .args(args),
        Duration::from_secs(90),
    ))
    .clone();
    let text = stdout(&o);
    for seq in 0..5 {
        assert!(
            text.contains(&format!(
                "server  <- devices/device-001/telemetry  device-001 seq={seq} "
            )),
            "telemetry {seq} missing: {text}"
        );
    }
    assert!(
        text.contains("device-001 <- devices/device-001/commands  set_interval"),
        "{text}"
    );
    assert!(text.contains("mqttkit broker down"), "{text}");
    let ca = std::fs::read(dir.path().join("out/certs/ca.crt")).unwrap();

    // The broker keeps running: status is healthy.
    ok(&run(
        Command::new(common::bin())
            .current_dir(dir.path())
            .args(["broker", "status"]),
        Duration::from_secs(30),
    ));

    // Again: the CA is reused, the running broker too.
    let o = ok(&run(
        Command::new(common::bin())
            .current_dir(dir.path())
            .args(args),
        Duration::from_secs(90),
    ))
    .clone();
    assert!(
        stdout(&o).contains("reusing the certificates"),
        "{}",
        stdout(&o)
    );
    assert!(
        common::stderr(&o).contains("already running"),
        "{}",
        common::stderr(&o)
    );
    assert_eq!(
        ca,
        std::fs::read(dir.path().join("out/certs/ca.crt")).unwrap(),
        "CA replaced"
    );
}

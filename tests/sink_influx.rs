//! `sub telemetry --sink influx://...` into a real InfluxDB 1.x (Debian's
//! `influxdb` package, v1 write API) started on a free loopback port.

mod common;
mod sink_support;

use common::Broker;
use sink_support::{kill_restart_flow, Influx};

#[test]
fn influx_keeps_every_point_once_across_sigkill() {
    let influx = Influx::start();
    let broker = Broker::start();
    let url = format!("influx://127.0.0.1:{}/telemetry", influx.port);
    kill_restart_flow(&broker, &url, 5000, &[]);

    // Read back with InfluxQL: one series per device, every field present.
    let v = influx.query(
        "telemetry",
        "SELECT count(seq), count(temperature_c), count(status), min(seq), max(seq) FROM telemetry GROUP BY device_id",
    );
    let series = v["results"][0]["series"].as_array().expect("series");
    assert_eq!(series.len(), 1, "{v}");
    assert_eq!(series[0]["tags"]["device_id"], "device-001", "{v}");
    assert_eq!(
        series[0]["values"][0].as_array().unwrap()[1..],
        [5000, 5000, 5000, 0, 4999].map(serde_json::Value::from),
        "{v}"
    );
    // Timestamps are the devices' own, in ns; one point per seq.
    let v = influx.query(
        "telemetry",
        "SELECT seq, received_unix_nano FROM telemetry WHERE device_id = 'device-001' LIMIT 3",
    );
    for row in v["results"][0]["series"][0]["values"].as_array().unwrap() {
        let (t, received) = (row[0].as_i64().unwrap(), row[2].as_i64().unwrap());
        assert!(
            t > 1_600_000_000_000_000_000 && received >= t - 60_000_000_000,
            "{row}"
        );
    }
}

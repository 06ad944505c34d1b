//! `sub telemetry --sink timestream://DB/TABLE` against moto's server:
//! multi-measure records with the right dimension and measures, never more
//! than 100 records per WriteRecords call.

mod common;
mod sink_support;

use std::collections::BTreeSet;
use std::time::Duration;

use common::Broker;
use sink_support::{Moto, SinkProc};

#[test]
fn timestream_records_have_the_device_dimension_and_every_measure() {
    let mut moto = Moto::start();
    let env_owned = moto.env();
    let env: Vec<(&str, &str)> = env_owned
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let broker = Broker::start();
    let url = "timestream://iot/telemetry";
    // Batches of 250 rows: the sink must split them into WriteRecords of <= 100.
    let mut sink = SinkProc::start(
        &broker,
        url,
        &["--batch-size", "250", "--batch-ms", "50"],
        &env,
    );
    sink.wait_subscribed();
    let mut c = broker.mqttkit();
    c.args(["pub", "telemetry", "--out", "out", "--count", "1000"]);
    common::ok(&common::run(&mut c, Duration::from_secs(60)));

    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let dump = loop {
        let d = moto.dump();
        let n = d["records"]["iot/telemetry"]
            .as_array()
            .map_or(0, |r| r.len());
        if n >= 1000 {
            break d;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "only {n} records:\n{}",
            sink.stderr()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    sink.terminate();

    let batches: Vec<u64> = dump["batches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b.as_u64().unwrap())
        .collect();
    assert!(
        batches.iter().all(|&b| (1..=100).contains(&b)),
        "{batches:?}"
    );
    assert!(
        batches.iter().filter(|&&b| b == 100).count() >= 5,
        "{batches:?}"
    );
    let records = dump["records"]["iot/telemetry"].as_array().unwrap();
    assert_eq!(records.len(), 1000);
    let mut seqs = BTreeSet::new();
    for r in records {
        assert_eq!(
            r["Dimensions"],
            serde_json::json!([{"Name": "device_id", "Value": "device-001"}]),
            "{r}"
        );
        assert_eq!(r["MeasureName"], "telemetry", "{r}");
        assert_eq!(r["MeasureValueType"], "MULTI", "{r}");
        assert_eq!(r["TimeUnit"], "NANOSECONDS", "{r}");
        assert!(
            r["Time"].as_str().unwrap().parse::<i64>().unwrap() > 1_600_000_000_000_000_000,
            "{r}"
        );
        let measures: Vec<(String, String)> = r["MeasureValues"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m["Name"].as_str().unwrap().to_string(),
                    m["Type"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        for (name, ty) in [
            ("seq", "BIGINT"),
            ("received_unix_nano", "BIGINT"),
            ("rssi_dbm", "BIGINT"),
            ("status", "VARCHAR"),
            ("temperature_c", "DOUBLE"),
            ("humidity_pct", "DOUBLE"),
            ("pressure_hpa", "DOUBLE"),
            ("battery_v", "DOUBLE"),
        ] {
            assert!(
                measures.contains(&(name.to_string(), ty.to_string())),
                "{name}: {r}"
            );
        }
        let seq = r["MeasureValues"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["Name"] == "seq")
            .unwrap()["Value"]
            .as_str()
            .unwrap()
            .parse::<u64>()
            .unwrap();
        seqs.insert(seq);
    }
    assert_eq!(seqs, (0..1000).collect::<BTreeSet<u64>>());

    // Stats cannot read Timestream back without its query API: a clear error.
    let mut c = broker.mqttkit();
    c.args(["sink", "stats", url]).envs(env.iter().copied());
    let o = common::run(&mut c, Duration::from_secs(30));
    assert!(!o.status.success());
    assert!(
        common::stderr(&o).contains("Timestream Query API"),
        "{}",
        common::stderr(&o)
    );
}

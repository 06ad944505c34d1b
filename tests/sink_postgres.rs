//! `sub telemetry --sink postgres://...` into a real PostgreSQL (Debian's
//! `postgresql` package) started on a free loopback port.

mod common;
mod sink_support;

use common::Broker;
use sink_support::{kill_restart_flow, Postgres};

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

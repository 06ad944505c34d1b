//! Dummy telemetry: plausible, slowly drifting sensor readings for one device.

use bytes::{Bytes, BytesMut};
use prost::Message;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::clock::now_unix_nano;
use crate::proto::v1::telemetry::Status;
use crate::proto::Telemetry;

/// Produces one device's readings as encoded protobuf payloads.
pub struct DummyDevice {
    msg: Telemetry,
    rng: StdRng,
    /// Encoded payloads are split off one shared buffer: one allocation per
    /// many messages instead of one per message.
    buf: BytesMut,
    next_seq: u64,
}

const BUF_BLOCK: usize = 64 * 1024;

impl DummyDevice {
    pub fn new(device_id: &str, start_seq: u64) -> Self {
        let mut rng = StdRng::from_rng(&mut rand::rng());
        let msg = Telemetry {
            device_id: device_id.to_string(),
            temperature_c: rng.random_range(18.0..24.0),
            humidity_pct: rng.random_range(35.0..55.0),
            pressure_hpa: rng.random_range(1005.0..1020.0),
            battery_v: rng.random_range(3.9..4.2),
            rssi_dbm: rng.random_range(-75..-55),
            ..Telemetry::default()
        };
        DummyDevice {
            msg,
            rng,
            buf: BytesMut::with_capacity(BUF_BLOCK),
            next_seq: start_seq,
        }
    }

    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The next reading, stamped now; returns its seq and encoded payload.
    pub fn next_payload(&mut self) -> (u64, Bytes) {
        self.step();
        let seq = self.next_seq;
        self.msg.seq = seq;
        self.msg.time_unix_nano = now_unix_nano();
        self.next_seq += 1;
        let len = self.msg.encoded_len();
        if self.buf.capacity() < len {
            self.buf.reserve(BUF_BLOCK.max(len));
        }
        self.msg
            .encode(&mut self.buf)
            .expect("buffer has room for the message");
        (seq, self.buf.split().freeze())
    }

    /// A small random walk, kept inside realistic bounds.
    fn step(&mut self) {
        let r = &mut self.rng;
        let m = &mut self.msg;
        m.temperature_c =
            round2((m.temperature_c + r.random_range(-0.05..0.05)).clamp(-20.0, 60.0));
        m.humidity_pct = round2((m.humidity_pct + r.random_range(-0.2..0.2)).clamp(5.0, 95.0));
        m.pressure_hpa = round2((m.pressure_hpa + r.random_range(-0.1..0.1)).clamp(950.0, 1050.0));
        // Batteries only discharge, slowly.
        m.battery_v = round3((m.battery_v - r.random_range(0.0..0.0002)).max(3.0));
        m.rssi_dbm = (m.rssi_dbm + r.random_range(-2..=2)).clamp(-110, -30);
        let status = if m.battery_v < 3.3 || m.rssi_dbm < -100 {
            Status::Error
        } else if m.battery_v < 3.5 || m.temperature_c > 45.0 || m.rssi_dbm < -90 {
            Status::Warning
        } else {
            Status::Ok
        };
        m.status = status as i32;
    }
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_decode_with_increasing_seq_and_sane_values() {
        let mut d = DummyDevice::new("dev-1", 5);
        let before = now_unix_nano();
        for expected in 5..2005u64 {
            let (seq, payload) = d.next_payload();
            assert_eq!(seq, expected);
            let t = Telemetry::decode(payload).unwrap();
            assert_eq!(t.device_id, "dev-1");
            assert_eq!(t.seq, expected);
            assert!(t.time_unix_nano >= before);
            assert!((-20.0..=60.0).contains(&t.temperature_c));
            assert!((5.0..=95.0).contains(&t.humidity_pct));
            assert!((950.0..=1050.0).contains(&t.pressure_hpa));
            assert!((3.0..=4.2).contains(&t.battery_v));
            assert!((-110..=-30).contains(&t.rssi_dbm));
            assert_ne!(t.status, Status::Unspecified as i32);
        }
        assert_eq!(d.next_seq(), 2005);
    }
}

//! What simulated devices send: real `Telemetry` messages stamped with their
//! send time, optionally padded to a fixed size.

use bytes::{BufMut, Bytes, BytesMut};
use prost::Message;

use crate::clock::now_unix_nano;
use crate::proto::Telemetry;
use crate::telemetry::dummy::DummyDevice;

/// Smallest `--payload BYTES`: room for the device id, seq and send time.
pub const MIN_PAYLOAD: usize = 48;
/// Largest `--payload BYTES`: below the 256 KiB packet limit of the connection layer.
pub const MAX_PAYLOAD: usize = 200_000;

/// A protobuf field number no decoder knows: decoders skip it, so padding
/// never breaks `Telemetry` decoding.
const PAD_FIELD: u8 = 15;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadKind {
    /// Dummy sensor readings (about 60 bytes).
    Telemetry,
    /// A `Telemetry` with id, seq and time, padded to about this many bytes.
    Bytes(usize),
}

pub fn parse_payload(s: &str) -> Result<PayloadKind, String> {
    if s == "telemetry" {
        return Ok(PayloadKind::Telemetry);
    }
    match crate::units::parse_size(s).map(usize::try_from) {
        Ok(Ok(n)) if (MIN_PAYLOAD..=MAX_PAYLOAD).contains(&n) => Ok(PayloadKind::Bytes(n)),
        Ok(_) => Err(format!(
            "'{s}' is out of range; use {MIN_PAYLOAD}..={MAX_PAYLOAD} bytes or `telemetry`"
        )),
        Err(_) => Err(format!(
            "'{s}' is neither `telemetry` nor a size, e.g. --payload 256 or --payload 1KiB"
        )),
    }
}

/// One simulated device's payloads, seq 0, 1, 2, ...
pub enum Source {
    Dummy(Box<DummyDevice>),
    /// The map's telemetry type (`bench --schema`).
    Generated(Box<crate::schema::generate::Generator>),
    Padded {
        device_id: String,
        size: usize,
        seq: u64,
        buf: BytesMut,
    },
}

impl Source {
    pub fn new(kind: PayloadKind, device_id: &str) -> Self {
        match kind {
            PayloadKind::Telemetry => Source::Dummy(Box::new(DummyDevice::new(device_id, 0))),
            PayloadKind::Bytes(size) => Source::Padded {
                device_id: device_id.to_string(),
                size,
                seq: 0,
                buf: BytesMut::new(),
            },
        }
    }

    /// `bench --schema`'s messages for `device_id`, else `Source::new`'s.
    pub fn for_device(
        kind: PayloadKind,
        schema: Option<&super::schema::BenchSchema>,
        device_id: &str,
    ) -> Self {
        match schema {
            Some(s) => Source::Generated(Box::new(s.generator(device_id))),
            None => Source::new(kind, device_id),
        }
    }

    /// The next message, stamped now.
    pub fn next_payload(&mut self) -> Bytes {
        match self {
            Source::Dummy(d) => d.next_payload().1,
            Source::Generated(g) => g.next_payload(now_unix_nano()).1,
            Source::Padded {
                device_id,
                size,
                seq,
                buf,
            } => {
                let t = Telemetry {
                    device_id: device_id.clone(),
                    seq: *seq,
                    time_unix_nano: now_unix_nano(),
                    ..Telemetry::default()
                };
                *seq += 1;
                let pad = pad_len(size.saturating_sub(t.encoded_len() + 1));
                buf.reserve(*size + 8);
                t.encode(buf).expect("reserved room");
                buf.put_u8((PAD_FIELD << 3) | 2);
                prost::encoding::encode_varint(pad as u64, buf);
                buf.put_bytes(0, pad);
                buf.split().freeze()
            }
        }
    }
}

/// The padding length n whose varint length prefix plus n fills `room`
/// bytes (one byte short at the rare varint-length boundaries).
fn pad_len(room: usize) -> usize {
    for k in 1..=4 {
        let n = room.saturating_sub(k);
        if prost::encoding::encoded_len_varint(n as u64) == k {
            return n;
        }
    }
    room.saturating_sub(3)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padded_payloads_decode_and_have_the_size() {
        for size in [MIN_PAYLOAD, 100, 127, 128, 129, 130, 1000, 20_000] {
            let mut s = Source::new(PayloadKind::Bytes(size), "bench-0001");
            for seq in 0..3u64 {
                let p = s.next_payload();
                assert!(
                    p.len() == size || p.len() + 1 == size,
                    "size {size}: {}",
                    p.len()
                );
                let t = Telemetry::decode(p).unwrap();
                assert_eq!(t.device_id, "bench-0001");
                assert_eq!(t.seq, seq);
                assert!(t.time_unix_nano > 0);
            }
        }
    }

    #[test]
    fn parse() {
        assert_eq!(parse_payload("telemetry"), Ok(PayloadKind::Telemetry));
        assert_eq!(parse_payload("256"), Ok(PayloadKind::Bytes(256)));
        assert!(parse_payload("10").unwrap_err().contains("out of range"));
        assert!(parse_payload("big").unwrap_err().contains("neither"));
        assert_eq!(parse_payload("1KB"), Ok(PayloadKind::Bytes(1000)));
        assert_eq!(parse_payload("1KiB"), Ok(PayloadKind::Bytes(1024)));
        assert!(parse_payload("1GiB").unwrap_err().contains("out of range"));
    }
}

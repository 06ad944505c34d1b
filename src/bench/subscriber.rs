//! A server subscriber on `devices/+/telemetry`, a handler over
//! [`crate::pipeline`]: decodes every message, records
//! its end-to-end latency and which (device, seq) pairs arrived. All state is
//! local to the task; the results are merged once at the end.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::mqtt::Message;
use anyhow::Result;
use hdrhistogram::Histogram;
use prost::Message as _;
use rumqttc::QoS;
use tokio::sync::mpsc;

use super::schema::{BenchSchema, Reading};
use super::Live;
use crate::clock::now_unix_nano;
use crate::mqtt::{unique_client_id, Endpoint, ALL_TELEMETRY};
use crate::pipeline::{self, Acks, Batching, Handled, Handler, Shutdown, SubscribeConfig};
use crate::proto::Telemetry;

/// Seqs above this are not ours (a bench never sends a billion per device).
const MAX_SEQ: u64 = 1 << 30;

/// Which seqs of one device arrived, and how often.
#[derive(Debug, Default)]
pub struct Seen {
    bits: Vec<u64>,
    pub distinct: u64,
    pub received: u64,
}

impl Seen {
    pub fn mark(&mut self, seq: u64) {
        self.received += 1;
        let word = (seq / 64) as usize;
        if word >= self.bits.len() {
            self.bits.resize((word + 1).next_power_of_two(), 0);
        }
        let bit = 1u64 << (seq % 64);
        if self.bits[word] & bit == 0 {
            self.bits[word] |= bit;
            self.distinct += 1;
        }
    }
}

pub struct SubResult {
    pub seen: HashMap<String, Seen>,
    /// End-to-end latency in microseconds.
    pub latency_us: Histogram<u64>,
    pub received: u64,
    /// Latencies below zero (clock stepped back): recorded as zero.
    pub below_zero: u64,
    pub undecodable: u64,
    pub last_delivery: Option<Instant>,
    pub error: Option<String>,
}

pub fn histogram() -> Histogram<u64> {
    // Up to an hour, 3 significant digits.
    Histogram::new_with_max(3_600_000_000, 3).expect("valid histogram bounds")
}

/// Runs one subscriber over the pipeline until `stop`; `ready` gets `Ok`
/// once it is subscribed, or the error that kept it from subscribing.
/// `(qos, max_packet)`: the subscription's QoS and `--max-packet`;
/// `schema`: the map's telemetry (`bench --schema`) instead of `Telemetry`.
pub async fn run(
    endpoint: Endpoint,
    (qos, max_packet): (QoS, usize),
    schema: Option<Arc<BenchSchema>>,
    live: Arc<Live>,
    ready: mpsc::Sender<Result<(), String>>,
    stop: Shutdown,
) -> SubResult {
    let filter = (schema.as_ref()).map_or_else(|| ALL_TELEMETRY.to_string(), |s| s.filter());
    let cfg = SubscribeConfig {
        filters: vec![filter],
        qos,
        client_id: unique_client_id("bench-sub"),
        persistent: false,
        // A lost connection is an error in the report, not hidden by a reconnect.
        reconnect_timeout: None,
        count: None,
        acks: Acks::OnReceipt,
        // Many handshakes run at once; rumqttc's default is 5 s.
        connect_timeout: Some(Duration::from_secs(30)),
        max_packet,
    };
    let mut h = Recorder {
        r: SubResult {
            seen: HashMap::new(),
            latency_us: histogram(),
            received: 0,
            below_zero: 0,
            undecodable: 0,
            last_delivery: None,
            error: None,
        },
        live,
        ready: Some(ready),
        schema,
    };
    if let Err(e) = pipeline::run(&endpoint, &cfg, stop, &mut h).await {
        let msg = match h.ready.take() {
            Some(ready) => {
                let msg = format!("{e:#}");
                let _ = ready.try_send(Err(msg.clone()));
                msg
            }
            None => format!("subscriber: {e:#}"),
        };
        h.r.error = Some(msg);
    }
    h.r
}

/// Records latency and which seqs arrived; everything stays in the task.
struct Recorder {
    r: SubResult,
    live: Arc<Live>,
    /// Until subscribed: whom to tell.
    ready: Option<mpsc::Sender<Result<(), String>>>,
    schema: Option<Arc<BenchSchema>>,
}

impl Recorder {
    /// (device, seq, send time in Unix ns) of a bench message, or `None`.
    fn decode(&self, p: &Message) -> Option<Reading> {
        if let Some(s) = &self.schema {
            return s.decode(p.topic.as_ref(), &p.payload);
        }
        // An empty payload decodes as an all-zero reading: it is none.
        if p.payload.is_empty() {
            return None;
        }
        let t = Telemetry::decode(p.payload.as_ref()).ok()?;
        Some((t.device_id, Some(t.seq), t.time_unix_nano as i128))
    }
}

impl Handler for Recorder {
    fn handle(&mut self, p: &Message) -> Result<Handled> {
        let now = now_unix_nano();
        let r = &mut self.r;
        r.received += 1;
        self.live.delivered.fetch_add(1, Ordering::Relaxed);
        r.last_delivery = Some(Instant::now());
        let decoded = self.decode(p);
        let r = &mut self.r;
        match decoded {
            Some((device, seq, time)) if seq.is_none_or(|s| s < MAX_SEQ) => {
                let lat_ns = now as i128 - time;
                if lat_ns < 0 {
                    r.below_zero += 1;
                }
                r.latency_us
                    .saturating_record((lat_ns.max(0) / 1000) as u64);
                // Without a seq every message is a new one.
                let mark = |s: &mut Seen| s.mark(seq.unwrap_or(s.received));
                match r.seen.get_mut(device.as_str()) {
                    Some(s) => mark(s),
                    None => mark(r.seen.entry(device).or_default()),
                }
                Ok(Handled::Counted)
            }
            _ => {
                r.undecodable += 1;
                Ok(Handled::Skipped)
            }
        }
    }

    fn commit(&mut self) -> impl std::future::Future<Output = Result<()>> + Send {
        // Nothing is buffered: every message is recorded when handled.
        std::future::ready(Ok(()))
    }

    fn batching(&self) -> Batching {
        // Acks are rumqttc's (on receipt), so commits have nothing to do.
        Batching {
            max_wait: Duration::from_secs(3600),
            max_messages: usize::MAX,
        }
    }

    fn subscribed(&mut self, _resumed: bool) {
        // Connected and subscribed before any device publishes.
        if let Some(ready) = self.ready.take() {
            let _ = ready.try_send(Ok(()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seen_counts_distinct_and_duplicates() {
        let mut s = Seen::default();
        for seq in [0, 1, 1, 63, 64, 1000, 0] {
            s.mark(seq);
        }
        assert_eq!(s.received, 7);
        assert_eq!(s.distinct, 5);
    }
}

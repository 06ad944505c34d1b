//! A server subscriber on `devices/+/telemetry`: decodes every message, records
//! its end-to-end latency and which (device, seq) pairs arrived. All state is
//! local to the task; the results are merged once at the end.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use prost::Message;
use rumqttc::{AsyncClient, Event, Incoming, QoS, SubscribeReasonCode};
use tokio::sync::{mpsc, watch};

use super::Live;
use crate::flows::dummy::now_unix_nano;
use crate::mqtt::{unique_client_id, Endpoint, ALL_TELEMETRY};
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

pub async fn run(
    endpoint: Endpoint,
    qos: QoS,
    live: Arc<Live>,
    ready: mpsc::Sender<Result<(), String>>,
    mut stop: watch::Receiver<bool>,
) -> SubResult {
    let mut r = SubResult {
        seen: HashMap::new(),
        latency_us: histogram(),
        received: 0,
        below_zero: 0,
        undecodable: 0,
        last_delivery: None,
        error: None,
    };
    let mut opts = endpoint.mqtt_options(&unique_client_id("bench-sub"));
    opts.set_clean_session(true);
    let (client, mut eventloop) = AsyncClient::new(opts, 16);
    eventloop.network_options.set_connection_timeout(30);
    let mut eventloop = super::device::Poller::new(eventloop);
    if let Err(e) = client.subscribe(ALL_TELEMETRY, qos).await {
        let msg = format!("subscriber: {e}");
        let _ = ready.send(Err(msg.clone())).await;
        r.error = Some(msg);
        return r;
    }
    // Connected and subscribed before any device publishes.
    loop {
        match eventloop.next().await {
            Ok(Event::Incoming(Incoming::SubAck(ack))) => {
                if ack
                    .return_codes
                    .iter()
                    .any(|c| matches!(c, SubscribeReasonCode::Failure))
                {
                    let msg = format!(
                        "the broker refused the subscription to {ALL_TELEMETRY}: the server identity must be allowed to read it (see the broker's ACL)"
                    );
                    let _ = ready.send(Err(msg.clone())).await;
                    r.error = Some(msg);
                    return r;
                }
                break;
            }
            Ok(_) => {}
            Err(e) => {
                let msg = crate::flows::describe_connect_error(&endpoint.describe(), &e);
                let _ = ready.send(Err(msg.clone())).await;
                r.error = Some(msg);
                return r;
            }
        }
    }
    let _ = ready.send(Ok(())).await;
    loop {
        tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => break,
            ev = eventloop.next() => match ev {
                Ok(Event::Incoming(Incoming::Publish(p))) => {
                    let now = now_unix_nano();
                    r.received += 1;
                    live.delivered.fetch_add(1, Ordering::Relaxed);
                    r.last_delivery = Some(Instant::now());
                    match Telemetry::decode(p.payload) {
                        Ok(t) if t.seq < MAX_SEQ => {
                            let lat_ns = now as i128 - t.time_unix_nano as i128;
                            if lat_ns < 0 {
                                r.below_zero += 1;
                            }
                            r.latency_us.saturating_record((lat_ns.max(0) / 1000) as u64);
                            match r.seen.get_mut(t.device_id.as_str()) {
                                Some(s) => s.mark(t.seq),
                                None => r.seen.entry(t.device_id).or_default().mark(t.seq),
                            }
                        }
                        _ => r.undecodable += 1,
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    r.error = Some(format!("subscriber lost its connection: {e}"));
                    return r;
                }
            },
        }
    }
    let _ = client.try_disconnect();
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while let Ok(ev) = eventloop.next().await {
            if matches!(ev, Event::Outgoing(rumqttc::Outgoing::Disconnect)) {
                break;
            }
        }
    })
    .await;
    r
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

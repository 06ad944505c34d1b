//! One simulated device: connects (within the shared handshake budget), waits
//! for the start signal while answering keep-alives, then publishes at its rate
//! or as fast as its in-flight window allows.
//!
//! The producer and the event-loop driver run concurrently in one task: the
//! producer hands payloads to rumqttc's channel (waiting when it is full), the
//! driver counts what was written (`Outgoing::Publish`) and acknowledged
//! (`PubAck`). When the driver stops it drops the event loop, which closes the
//! channel and so also ends a producer waiting on it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, Incoming, Outgoing, QoS};
use tokio::sync::{mpsc, watch, Notify, Semaphore};
use tokio::time::Instant;

use super::payload::{PayloadKind, Source};
use super::Live;
// Cancel-safe polling (see there); `bench::subscriber` takes it from here.
pub use crate::mqtt::poller::Poller;
use crate::mqtt::Endpoint;

/// Settings every device shares.
pub struct Plan {
    pub qos: QoS,
    /// Messages per second per device; None = as fast as possible.
    pub rate: Option<f64>,
    /// Messages per device; None = until the stop signal.
    pub count: Option<u64>,
    pub payload: PayloadKind,
    pub inflight: u16,
    pub devices: usize,
    pub handshakes: Arc<Semaphore>,
    pub live: Arc<Live>,
}

/// Who a device is and how it connects.
pub struct DeviceSpec {
    pub index: usize,
    /// Carried in the payload (and its certificate CN with per-device identities).
    pub device_id: String,
    pub client_id: String,
    pub topic: String,
    pub endpoint: Endpoint,
}

#[derive(Debug, Default)]
pub struct DeviceResult {
    pub device_id: String,
    pub connected: bool,
    pub connect_us: Option<u64>,
    /// Written to the connection (`Outgoing::Publish`).
    pub published: u64,
    /// Acknowledged by the broker (QoS 1 PUBACK).
    pub acked: u64,
    pub error: Option<String>,
}

pub async fn run(
    spec: DeviceSpec,
    plan: Arc<Plan>,
    ready: mpsc::Sender<()>,
    mut go: watch::Receiver<Option<Instant>>,
    stop: watch::Receiver<bool>,
) -> DeviceResult {
    let mut r = DeviceResult {
        device_id: spec.device_id.clone(),
        ..DeviceResult::default()
    };
    let mut opts = spec.endpoint.mqtt_options(&spec.client_id);
    opts.set_clean_session(true);
    opts.set_inflight(plan.inflight);
    let (client, mut eventloop) = AsyncClient::new(opts, plan.inflight as usize);
    // Handshakes queue behind each other on a busy broker: be patient.
    eventloop.network_options.set_connection_timeout(60);
    let mut poller = Poller::new(eventloop);

    // Connect, at most `--connect-parallel` handshakes at a time.
    {
        let _permit = plan.handshakes.acquire().await;
        let t0 = Instant::now();
        loop {
            match poller.next().await {
                Ok(Event::Incoming(Incoming::ConnAck(_))) => break,
                Ok(_) => {}
                Err(e) => {
                    r.error = Some(crate::mqtt::failure::describe_connect_error(
                        &spec.endpoint.describe(),
                        &e,
                    ));
                    let _ = ready.send(()).await;
                    return r;
                }
            }
        }
        r.connected = true;
        r.connect_us = Some(t0.elapsed().as_micros() as u64);
    }
    plan.live.connected.fetch_add(1, Ordering::Relaxed);
    let _ = ready.send(()).await;

    // Stay connected (keep-alives) until every device is connected.
    let start = loop {
        tokio::select! {
            changed = go.changed() => {
                if changed.is_err() {
                    return r;
                }
                if let Some(t) = *go.borrow() {
                    break t;
                }
            }
            ev = poller.next() => {
                if let Err(e) = ev {
                    r.error = Some(format!("connection lost before publishing: {e}"));
                    return r;
                }
            }
        }
    };

    let handed = AtomicU64::new(0);
    let producer_done = AtomicBool::new(false);
    let wake = Notify::new();
    let published = AtomicU64::new(0);
    let acked = AtomicU64::new(0);
    // Driver -> producer: an ack arrived, or the driver ended.
    let acks_wake = Notify::new();
    let driver_ended = AtomicBool::new(false);

    let producer = {
        let (client, handed, producer_done, wake) = (&client, &handed, &producer_done, &wake);
        let (acked, acks_wake, driver_ended) = (&acked, &acks_wake, &driver_ended);
        let (plan, topic, mut stop) = (&plan, spec.topic.clone(), stop);
        let mut source = Source::new(plan.payload, &spec.device_id);
        // Fixed-rate devices start spread over one interval, not all at once.
        let offset = plan
            .rate
            .map(|rate| Duration::from_secs_f64(spec.index as f64 / plan.devices as f64 / rate))
            .unwrap_or_default();
        // Unthrottled at QoS 1, refill a quarter of the window at a time, as
        // `pub` does: one message per PUBACK would be one TLS record each.
        let window = u64::from(plan.inflight);
        let refill_below = window - window / 4;
        let bulk_acks = plan.rate.is_none() && plan.qos != QoS::AtMostOnce;
        async move {
            let mut n = 0u64;
            'produce: loop {
                if plan.count.is_some_and(|c| n >= c) || *stop.borrow() {
                    break;
                }
                if bulk_acks && n - acked.load(Ordering::Acquire) >= window {
                    while n - acked.load(Ordering::Acquire) > refill_below {
                        if driver_ended.load(Ordering::Acquire) {
                            break 'produce;
                        }
                        tokio::select! {
                            _ = acks_wake.notified() => {}
                            _ = stop.wait_for(|s| *s) => break 'produce,
                        }
                    }
                }
                if let Some(rate) = plan.rate {
                    let due = start + offset + Duration::from_secs_f64(n as f64 / rate);
                    if due > Instant::now() {
                        tokio::select! {
                            _ = tokio::time::sleep_until(due) => {}
                            _ = stop.wait_for(|s| *s) => break,
                        }
                    }
                }
                let payload = source.next_payload();
                if client
                    .publish_bytes(topic.clone(), plan.qos, false, payload)
                    .await
                    .is_err()
                {
                    break; // the driver stopped
                }
                n += 1;
                handed.store(n, Ordering::Release);
                wake.notify_one();
            }
            producer_done.store(true, Ordering::Release);
            wake.notify_one();
        }
    };

    let driver = {
        let (handed, producer_done, wake) = (&handed, &producer_done, &wake);
        let (published, acked, plan, client) = (&published, &acked, &plan, &client);
        let (acks_wake, driver_ended) = (&acks_wake, &driver_ended);
        let endpoint = spec.endpoint.describe();
        let driver = async move {
            let mut poller = poller;
            // Wakes the check below even when the network is quiet.
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                if producer_done.load(Ordering::Acquire) {
                    let target = handed.load(Ordering::Acquire);
                    let done = if plan.qos == QoS::AtMostOnce {
                        published.load(Ordering::Relaxed) >= target
                    } else {
                        acked.load(Ordering::Relaxed) >= target
                    };
                    if done {
                        break;
                    }
                }
                tokio::select! {
                    ev = poller.next() => match ev {
                        Ok(Event::Outgoing(Outgoing::Publish(_))) => {
                            published.fetch_add(1, Ordering::Relaxed);
                            plan.live.published.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(Event::Incoming(Incoming::PubAck(_))) => {
                            acked.fetch_add(1, Ordering::Release);
                            acks_wake.notify_one();
                        }
                        Ok(_) => {}
                        Err(e) => {
                            // Returning drops the event loop: the producer stops too.
                            return Some(format!("connection to {endpoint} lost while publishing: {e}"));
                        }
                    },
                    _ = wake.notified() => {}
                    _ = tick.tick() => {}
                }
            }
            // A clean DISCONNECT, so the broker does not log a lost client.
            poller.disconnect(client, Duration::from_secs(2)).await;
            None
        };
        async move {
            let error = driver.await;
            driver_ended.store(true, Ordering::Release);
            acks_wake.notify_one();
            error
        }
    };

    let ((), error) = tokio::join!(producer, driver);
    r.published = published.load(Ordering::Relaxed);
    r.acked = if plan.qos == QoS::AtMostOnce {
        0
    } else {
        acked.load(Ordering::Relaxed)
    };
    r.error = error;
    r
}

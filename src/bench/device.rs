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

use rumqttc::QoS;
use tokio::sync::{mpsc, watch, Notify, Semaphore};
use tokio::time::Instant;

use super::payload::{PayloadKind, Source};
use super::Live;
// Cancel-safe polling (see there); `bench::subscriber` takes it from here.
pub use crate::mqtt::poller::Poller;
use crate::mqtt::{session, Client, Endpoint, Event, Options};

/// Settings every device shares.
pub struct Plan {
    pub qos: QoS,
    /// Messages per second per device; None = as fast as possible.
    pub rate: Option<f64>,
    /// Messages per device; None = until the stop signal.
    pub count: Option<u64>,
    pub payload: PayloadKind,
    /// `--schema`: the map's telemetry type instead of `payload`.
    pub schema: Option<Arc<super::schema::BenchSchema>>,
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
    /// Acknowledged by the broker (QoS 1 PUBACK), successfully or not.
    pub acked: u64,
    /// Acknowledged with a failure reason code (MQTT 5, e.g. 0x87): not loss,
    /// the broker refused them.
    pub refused: u64,
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
    let opts = Options {
        inflight: Some(plan.inflight),
        channel: plan.inflight as usize,
        // Handshakes queue behind each other on a busy broker: be patient.
        connect_timeout: Some(Duration::from_secs(60)),
        ..Options::new(&spec.client_id)
    };
    let (client, eventloop) = session::open(&spec.endpoint, &opts);
    let mut poller = Poller::new(eventloop);

    match connect(&mut poller, &plan, &spec.endpoint).await {
        Ok(us) => {
            r.connected = true;
            r.connect_us = Some(us);
        }
        Err(e) => {
            r.error = Some(e);
            let _ = ready.send(()).await;
            return r;
        }
    }
    plan.live.connected.fetch_add(1, Ordering::Relaxed);
    let _ = ready.send(()).await;

    let start = match wait_for_start(&mut poller, &mut go).await {
        Ok(Some(start)) => start,
        Ok(None) => return r,
        Err(e) => {
            r.error = Some(e);
            return r;
        }
    };
    let counters = Counters::default();
    let ((), error) = tokio::join!(
        produce(&counters, &client, &plan, &spec, start, stop),
        drive(&counters, poller, &client, &plan, spec.endpoint.describe()),
    );
    r.published = counters.published.load(Ordering::Relaxed);
    r.acked = if plan.qos == QoS::AtMostOnce {
        0
    } else {
        counters.acked.load(Ordering::Relaxed)
    };
    r.refused = counters.refused.load(Ordering::Relaxed);
    r.error = error;
    r
}

/// Connects, at most `--connect-parallel` handshakes at a time; returns the
/// handshake time in microseconds.
async fn connect(poller: &mut Poller, plan: &Plan, endpoint: &Endpoint) -> Result<u64, String> {
    let _permit = plan.handshakes.acquire().await;
    let t0 = Instant::now();
    loop {
        match poller.next().await {
            Ok(Event::Connected { .. }) => return Ok(t0.elapsed().as_micros() as u64),
            Ok(_) => {}
            Err(e) => {
                return Err(crate::mqtt::failure::describe_connect_error(
                    &endpoint.describe(),
                    &e,
                ))
            }
        }
    }
}

/// Stays connected (keep-alives) until every device is connected and the
/// start signal comes; `None` when the bench ended first.
async fn wait_for_start(
    poller: &mut Poller,
    go: &mut watch::Receiver<Option<Instant>>,
) -> Result<Option<Instant>, String> {
    loop {
        tokio::select! {
            changed = go.changed() => {
                if changed.is_err() {
                    return Ok(None);
                }
                if let Some(t) = *go.borrow() {
                    return Ok(Some(t));
                }
            }
            ev = poller.next() => {
                if let Err(e) = ev {
                    return Err(format!("connection lost before publishing: {e}"));
                }
            }
        }
    }
}

/// What the producer and the driver tell each other while publishing.
#[derive(Default)]
struct Counters {
    /// Payloads handed to rumqttc's channel.
    handed: AtomicU64,
    producer_done: AtomicBool,
    /// Producer -> driver: a payload was handed over, or the producer ended.
    wake: Notify,
    /// Written to the connection.
    published: AtomicU64,
    /// Acknowledged, successfully or not (the window and the end wait on it).
    acked: AtomicU64,
    /// Of those, acknowledged with a failure reason code (MQTT 5).
    refused: AtomicU64,
    /// Driver -> producer: an ack arrived, or the driver ended.
    acks_wake: Notify,
    driver_ended: AtomicBool,
}

/// Hands payloads to rumqttc at the device's rate (or as the in-flight
/// window allows) until the count is reached, the stop signal comes or the
/// driver ends.
async fn produce(
    c: &Counters,
    client: &Client,
    plan: &Plan,
    spec: &DeviceSpec,
    start: Instant,
    mut stop: watch::Receiver<bool>,
) {
    let mut source = Source::for_device(plan.payload, plan.schema.as_deref(), &spec.device_id);
    // Fixed-rate devices start spread over one interval, not all at once.
    let offset = plan
        .rate
        .map(|rate| Duration::from_secs_f64(spec.index as f64 / plan.devices as f64 / rate))
        .unwrap_or_default();
    let bulk_acks = plan.rate.is_none() && plan.qos != QoS::AtMostOnce;
    let mut n = 0u64;
    loop {
        if plan.count.is_some_and(|c| n >= c) || *stop.borrow() {
            break;
        }
        if bulk_acks && !window_open(c, plan, n, &mut stop).await {
            break;
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
        if (client.publish(&spec.topic, plan.qos, false, payload, None))
            .await
            .is_err()
        {
            break; // the driver stopped
        }
        n += 1;
        c.handed.store(n, Ordering::Release);
        c.wake.notify_one();
    }
    c.producer_done.store(true, Ordering::Release);
    c.wake.notify_one();
}

/// With a full in-flight window, waits until a quarter of it is acknowledged,
/// as `pub` does: one message per PUBACK would be one TLS record each.
/// False when the stop signal came or the driver ended meanwhile.
async fn window_open(
    c: &Counters,
    plan: &Plan,
    handed: u64,
    stop: &mut watch::Receiver<bool>,
) -> bool {
    let window = u64::from(plan.inflight);
    let refill_below = window - window / 4;
    if handed - c.acked.load(Ordering::Acquire) < window {
        return true;
    }
    while handed - c.acked.load(Ordering::Acquire) > refill_below {
        if c.driver_ended.load(Ordering::Acquire) {
            return false;
        }
        tokio::select! {
            _ = c.acks_wake.notified() => {}
            _ = stop.wait_for(|s| *s) => return false,
        }
    }
    true
}

/// Drives the event loop until the producer is done and everything handed
/// over was written (QoS 0) or acknowledged (QoS 1); the error that ended it
/// early, if any.
async fn drive(
    c: &Counters,
    poller: Poller,
    client: &Client,
    plan: &Plan,
    endpoint: String,
) -> Option<String> {
    let error = pump(c, poller, client, plan, &endpoint).await;
    c.driver_ended.store(true, Ordering::Release);
    c.acks_wake.notify_one();
    error
}

async fn pump(
    c: &Counters,
    mut poller: Poller,
    client: &Client,
    plan: &Plan,
    endpoint: &str,
) -> Option<String> {
    // Wakes the check below even when the network is quiet.
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    while !settled(c, plan) {
        tokio::select! {
            ev = poller.next() => match ev {
                Ok(Event::Sent(_)) => {
                    c.published.fetch_add(1, Ordering::Relaxed);
                    plan.live.published.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Event::PubAck(ack)) => {
                    if !ack.reason.is_success() {
                        c.refused.fetch_add(1, Ordering::Relaxed);
                    }
                    c.acked.fetch_add(1, Ordering::Release);
                    c.acks_wake.notify_one();
                }
                Ok(_) => {}
                Err(e) => {
                    // Returning drops the event loop: the producer stops too.
                    return Some(format!("connection to {endpoint} lost while publishing: {e}"));
                }
            },
            _ = c.wake.notified() => {}
            _ = tick.tick() => {}
        }
    }
    // A clean DISCONNECT, so the broker does not log a lost client.
    poller.disconnect(client, Duration::from_secs(2)).await;
    None
}

/// The producer is done and everything it handed over went out.
fn settled(c: &Counters, plan: &Plan) -> bool {
    if !c.producer_done.load(Ordering::Acquire) {
        return false;
    }
    let target = c.handed.load(Ordering::Acquire);
    if plan.qos == QoS::AtMostOnce {
        c.published.load(Ordering::Relaxed) >= target
    } else {
        c.acked.load(Ordering::Relaxed) >= target
    }
}

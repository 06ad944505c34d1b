//! The at-least-once subscriber behind `sub telemetry --sink`.
//!
//! A persistent session (clean_session=false, a fixed client id) and manual
//! acknowledgements: a message is acknowledged only after the batch holding it
//! is committed, so a crash anywhere before that leaves it with the broker,
//! which delivers it again; the store's (device_id, seq) key absorbs the
//! repeat. The broker bounds how many unacknowledged deliveries are in flight
//! (mosquitto `max_inflight_messages`); batches fill up to that, so it should
//! be at least `--batch-size`, and `max_queued_messages` must hold what
//! arrives while the sink is down.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use prost::Message;
use rumqttc::{AsyncClient, Event, Incoming, Outgoing, Publish, QoS};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{now_unix_nano, redact, SinkOptions, SinkUrl, Store, TelemetryRow};
use crate::mqtt::{ConnectionArgs, Role};
use crate::proto::Telemetry;

/// What the network task tells the batcher, in arrival order.
enum Net {
    Connected {
        session_present: bool,
    },
    Publish(Publish),
    Subscribed,
    SubscribeRefused,
    /// The first connection failed: nothing was received, give up.
    Fatal(String),
    Lost(String),
}

/// A stable client id per destination, so a restarted sink resumes its session.
pub fn default_client_id(sink_url: &str, device_id: Option<&str>) -> String {
    // FNV-1a: stable across builds and platforms, unlike std's hasher.
    let mut h: u64 = 0xcbf29ce484222325;
    for b in sink_url.bytes().chain(device_id.unwrap_or("+").bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("mqttkit-sink-{:08x}", h as u32)
}

/// Subscribes to telemetry and stores every message in `opts.sink`, acknowledging
/// each only after it is committed. Ends on SIGINT/SIGTERM (after a final
/// commit) or after `count` rows are stored.
pub async fn run_subscriber(
    conn: &ConnectionArgs,
    device_id: Option<&str>,
    count: Option<u64>,
    opts: &SinkOptions,
) -> Result<ExitCode> {
    let Some(raw_url) = opts.sink.as_deref() else {
        bail!("--sink: no URL given");
    };
    let url: SinkUrl = raw_url.parse()?;
    if let Some(d) = device_id {
        if d.is_empty() || d.contains(['/', '+', '#']) {
            bail!("--device-id '{d}': a device id cannot be empty or contain '/', '+' or '#'");
        }
    }
    // The store must work before anything is taken from the broker.
    let store = Store::open(&url).await?;

    let endpoint = conn.resolve(Role::Server)?;
    let client_id = endpoint
        .client_id
        .clone()
        .unwrap_or_else(|| default_client_id(raw_url, device_id));
    let mut mqtt = endpoint.mqtt_options(&client_id);
    mqtt.set_clean_session(false);
    mqtt.set_manual_acks(true);
    mqtt.set_request_channel_capacity(1024);
    let (client, eventloop) = AsyncClient::new(mqtt, 1024);
    let topic = match device_id {
        Some(d) => crate::mqtt::telemetry_topic(d),
        None => crate::mqtt::ALL_TELEMETRY.to_string(),
    };
    crate::note!(
        "sink: {} -> {} (client id {client_id}; a restart with the same id resumes)",
        endpoint.describe(),
        redact(raw_url)
    );

    let (tx, rx) = mpsc::unbounded_channel();
    let net = tokio::spawn(network_task(eventloop, client.clone(), topic.clone(), tx));
    let mut sink = Batcher {
        store,
        url,
        client: client.clone(),
        batch_size: opts.batch_size.max(1) as usize,
        batch_wait: Duration::from_millis(opts.batch_ms.max(1)),
        count,
        rows: Vec::new(),
        acks: Vec::new(),
        first_at: None,
        stored: 0,
        duplicates: 0,
        rejected: 0,
        undecodable: 0,
        progress: crate::output::spinner(format!("storing {topic}")),
    };
    let result = sink.run(rx, &topic).await;
    sink.progress.finish_and_clear();
    // Acks are queued before the disconnect, and rumqttc sends requests in order.
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(3), net).await;
    let code = result?;
    crate::note!(
        "sink: stored {} messages ({} already there){}{}",
        sink.stored,
        sink.duplicates,
        if sink.rejected > 0 {
            format!(", {} rejected by the store", sink.rejected)
        } else {
            String::new()
        },
        if sink.undecodable > 0 {
            format!(", {} undecodable messages skipped", sink.undecodable)
        } else {
            String::new()
        }
    );
    Ok(code)
}

async fn network_task(
    mut eventloop: rumqttc::EventLoop,
    client: AsyncClient,
    topic: String,
    tx: mpsc::UnboundedSender<Net>,
) {
    let mut connected_once = false;
    let mut closing = false;
    let mut backoff = Duration::from_millis(250);
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Incoming::ConnAck(ack))) => {
                connected_once = true;
                backoff = Duration::from_millis(250);
                // A resumed session still has the subscription; subscribing
                // again while mosquitto resends its in-flight messages gets
                // the connection dropped with a protocol error.
                if !ack.session_present {
                    let _ = client.try_subscribe(topic.clone(), QoS::AtLeastOnce);
                }
                let _ = tx.send(Net::Connected {
                    session_present: ack.session_present,
                });
            }
            Ok(Event::Incoming(Incoming::Publish(p))) => {
                // Once the batcher is done, keep polling (without acking) so
                // its last acks and the disconnect still go out.
                let _ = tx.send(Net::Publish(p));
            }
            Ok(Event::Incoming(Incoming::SubAck(s))) => {
                if s.return_codes
                    .iter()
                    .any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure))
                {
                    let _ = tx.send(Net::SubscribeRefused);
                } else {
                    let _ = tx.send(Net::Subscribed);
                }
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => {
                // Read on until the broker closes: closing a socket with
                // unread data resets it, and the broker may then drop the
                // last acks and the DISCONNECT unread.
                closing = true;
            }
            Ok(_) => {}
            Err(_) if closing => return,
            Err(e) => {
                // rumqttc keeps events it read before the failure and would
                // hand them out after the next CONNACK, where their packet ids
                // mean nothing. Deliver them now, before `Lost`: they are
                // stored, and their acks are dropped when the new connection
                // starts (the broker redelivers what it kept).
                for ev in eventloop.state.events.drain(..) {
                    if let Event::Incoming(Incoming::Publish(p)) = ev {
                        let _ = tx.send(Net::Publish(p));
                    }
                }
                if !connected_once {
                    let _ = tx.send(Net::Fatal(e.to_string()));
                    return;
                }
                if tx.send(Net::Lost(e.to_string())).is_err() {
                    return; // the batcher is done
                }
                // The next poll reconnects; the session (and our unacked
                // messages) waits at the broker.
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}

struct Batcher {
    store: Store,
    url: SinkUrl,
    client: AsyncClient,
    batch_size: usize,
    batch_wait: Duration,
    count: Option<u64>,
    rows: Vec<TelemetryRow>,
    /// Every message of the open batch, in arrival order (PUBACKs go in order).
    acks: Vec<Publish>,
    first_at: Option<Instant>,
    stored: u64,
    duplicates: u64,
    rejected: u64,
    undecodable: u64,
    progress: indicatif::ProgressBar,
}

enum Stop {
    Signal,
    Count,
}

impl Batcher {
    async fn run(&mut self, mut rx: mpsc::UnboundedReceiver<Net>, topic: &str) -> Result<ExitCode> {
        use tokio::signal::unix::{signal, SignalKind};
        let mut sigterm =
            signal(SignalKind::terminate()).context("installing a SIGTERM handler")?;
        let mut sigint = signal(SignalKind::interrupt()).context("installing a SIGINT handler")?;
        if self.count == Some(0) {
            return Ok(ExitCode::SUCCESS);
        }
        loop {
            let deadline = self.first_at.map(|t| t + self.batch_wait);
            let stop = tokio::select! {
                biased;
                _ = sigterm.recv() => Some(Stop::Signal),
                _ = sigint.recv() => Some(Stop::Signal),
                _ = sleep_until(deadline), if deadline.is_some() => {
                    self.flush(&mut sigterm, &mut sigint).await?
                }
                msg = rx.recv() => match msg {
                    None => bail!("the MQTT connection task ended unexpectedly"),
                    Some(Net::Fatal(e)) => bail!("cannot connect to the broker: {e}"),
                    Some(Net::SubscribeRefused) => bail!(
                        "the broker refused the subscription to {topic}; check the ACL for the server identity"
                    ),
                    Some(Net::Lost(e)) => {
                        crate::note!("sink: connection lost ({e}); reconnecting");
                        None
                    }
                    Some(Net::Subscribed) => {
                        crate::note!("sink: subscribed to {topic}");
                        None
                    }
                    Some(Net::Connected { session_present }) => {
                        tracing::info!("connected (session present: {session_present})");
                        if session_present {
                            crate::note!("sink: resumed the session subscribed to {topic}");
                        }
                        if !self.acks.is_empty() {
                            // These came on the previous connection: store them,
                            // but their packet ids mean nothing now; the broker
                            // delivers them again if it kept the session.
                            self.acks.clear();
                            self.flush(&mut sigterm, &mut sigint).await?
                        } else {
                            None
                        }
                    }
                    Some(Net::Publish(p)) => {
                        self.take(p);
                        let reached = self
                            .count
                            .is_some_and(|n| self.stored + self.rows.len() as u64 >= n);
                        if self.rows.len() >= self.batch_size || reached {
                            self.flush(&mut sigterm, &mut sigint).await?
                        } else {
                            None
                        }
                    }
                }
            };
            match stop {
                None => {}
                Some(Stop::Count) => return Ok(ExitCode::SUCCESS),
                Some(Stop::Signal) => {
                    // Take what already arrived, commit and acknowledge it.
                    while let Ok(Net::Publish(p)) = rx.try_recv() {
                        self.take(p);
                    }
                    self.flush(&mut sigterm, &mut sigint).await?;
                    return Ok(ExitCode::SUCCESS);
                }
            }
        }
    }

    fn take(&mut self, p: Publish) {
        if self.first_at.is_none() {
            self.first_at = Some(Instant::now());
        }
        let device = crate::mqtt::device_of_topic(&p.topic);
        let row = Telemetry::decode(p.payload.as_ref())
            .map_err(|e| e.to_string())
            .and_then(|t| TelemetryRow::from_telemetry(&t, device, now_unix_nano()));
        match row {
            Ok(r) => self.rows.push(r),
            Err(e) => {
                // It can never be stored; acknowledging it keeps it from
                // blocking the session forever.
                self.undecodable += 1;
                crate::note!(
                    "warning: {}: undecodable Telemetry ({} bytes): {e}; skipped",
                    p.topic,
                    p.payload.len()
                );
            }
        }
        self.acks.push(p);
    }

    /// Commits the open batch (retrying with backoff while the store fails),
    /// then acknowledges its messages.
    async fn flush(
        &mut self,
        sigterm: &mut tokio::signal::unix::Signal,
        sigint: &mut tokio::signal::unix::Signal,
    ) -> Result<Option<Stop>> {
        self.first_at = None;
        let mut backoff = Duration::from_millis(200);
        loop {
            match self.store.write_batch(&self.rows).await {
                Ok(w) => {
                    self.stored += w.stored as u64;
                    self.duplicates += w.duplicates as u64;
                    self.rejected += w.rejected as u64;
                    break;
                }
                Err(e) => {
                    // Nothing is acknowledged: the broker keeps the messages.
                    crate::note!(
                        "sink: store failed: {e:#}; retrying in {} ms (messages stay with the broker)",
                        backoff.as_millis()
                    );
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = sigterm.recv() => bail!("stopped while the store was failing; {} messages were not acknowledged and stay with the broker", self.acks.len()),
                        _ = sigint.recv() => bail!("stopped while the store was failing; {} messages were not acknowledged and stay with the broker", self.acks.len()),
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                    // A dropped database connection needs a new one.
                    match Store::open(&self.url).await {
                        Ok(s) => self.store = s,
                        Err(e) => tracing::debug!("reopening the store: {e:#}"),
                    }
                }
            }
        }
        tracing::debug!("committed {} rows", self.rows.len());
        self.rows.clear();
        for p in self.acks.drain(..) {
            self.client
                .ack(&p)
                .await
                .context("acknowledging to the broker")?;
        }
        self.progress
            .set_message(format!("{} rows stored", self.stored));
        if self.count.is_some_and(|n| self.stored >= n) {
            return Ok(Some(Stop::Count));
        }
        Ok(None)
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_id_is_stable_and_per_destination() {
        let a = default_client_id("sqlite:a.db", None);
        assert_eq!(a, default_client_id("sqlite:a.db", None));
        assert_ne!(a, default_client_id("sqlite:b.db", None));
        assert_ne!(a, default_client_id("sqlite:a.db", Some("d1")));
        assert!(a.starts_with("mqttkit-sink-") && a.len() <= 23);
    }
}

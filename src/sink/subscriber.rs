//! The at-least-once store behind `sub telemetry --sink`, as a handler over
//! [`crate::pipeline`].
//!
//! A persistent session (clean_session=false, a fixed client id) and manual
//! acknowledgements: a message is acknowledged only after the batch holding it
//! is committed, so a crash anywhere before that leaves it with the broker,
//! which delivers it again; the store's (device_id, seq) key absorbs the
//! repeat. The broker bounds how many unacknowledged deliveries are in flight
//! (mosquitto `max_inflight_messages`); batches fill up to that, so it should
//! be at least `--batch-size`, and `max_queued_messages` must hold what
//! arrives while the sink is down. With `--qos 0` nothing is acknowledged:
//! what arrives while the sink is down, or is not committed at a crash, is lost.

use std::future::Future;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Result};
use prost::Message;
use rumqttc::{Publish, QoS};

use super::{redact, SinkOptions, SinkUrl, Store, TelemetryRow};
use crate::mqtt::Endpoint;
use crate::pipeline::{self, Backoff, Batching, Handled, Handler, Shutdown, SubscribeConfig};
use crate::proto::Telemetry;

/// Delays between attempts to commit while the store fails.
const STORE_RETRY_MIN: Duration = Duration::from_millis(200);
const STORE_RETRY_MAX: Duration = Duration::from_secs(10);

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

/// An open store and how to batch into it: opened before anything is taken
/// from the broker, so an unusable store fails first.
pub struct Sink {
    raw_url: String,
    url: SinkUrl,
    store: Store,
    batching: Batching,
}

impl Sink {
    pub async fn open(opts: &SinkOptions) -> Result<Sink> {
        let Some(raw_url) = opts.sink.clone() else {
            bail!("--sink: no URL given; pass --sink sqlite:PATH (or another store URL)");
        };
        let url: SinkUrl = raw_url.parse()?;
        let store = Store::open(&url).await?;
        Ok(Sink {
            raw_url,
            url,
            store,
            batching: Batching {
                max_wait: Duration::from_millis(opts.batch_ms.max(1)),
                max_messages: opts.batch_size.max(1) as usize,
            },
        })
    }

    pub fn default_client_id(&self, device_id: Option<&str>) -> String {
        default_client_id(&self.raw_url, device_id)
    }

    /// Stores every message of `cfg`'s subscription, acknowledging each only
    /// after it is committed. Ends on SIGINT/SIGTERM (after a final commit)
    /// or after `cfg.count` rows are stored.
    pub async fn run(self, endpoint: &Endpoint, cfg: &SubscribeConfig) -> Result<ExitCode> {
        let topic = cfg.filters.join(", ");
        crate::note!(
            "sink: {} -> {} (client id {}; a restart with the same id resumes)",
            endpoint.describe(),
            redact(&self.raw_url),
            cfg.client_id
        );
        if cfg.qos == QoS::AtMostOnce {
            crate::note!("sink: QoS 0: messages are not acknowledged; what arrives while the sink is down or before a crash's last commit is lost");
        }
        let shutdown = Shutdown::install();
        let mut h = Storing {
            store: self.store,
            url: self.url,
            batching: self.batching,
            shutdown: shutdown.clone(),
            rows: Vec::new(),
            stored: 0,
            duplicates: 0,
            rejected: 0,
            progress: crate::output::spinner(format!("storing {topic}")),
            topic,
        };
        let result = pipeline::run(endpoint, cfg, shutdown, &mut h).await;
        h.progress.finish_and_clear();
        let summary = result?;
        crate::note!(
            "sink: stored {} messages ({} already there){}{}",
            h.stored,
            h.duplicates,
            if h.rejected > 0 {
                format!(", {} rejected by the store", h.rejected)
            } else {
                String::new()
            },
            if summary.skipped > 0 {
                format!(", {} undecodable messages skipped", summary.skipped)
            } else {
                String::new()
            }
        );
        Ok(ExitCode::SUCCESS)
    }
}

struct Storing {
    store: Store,
    url: SinkUrl,
    batching: Batching,
    shutdown: Shutdown,
    topic: String,
    /// The open batch.
    rows: Vec<TelemetryRow>,
    stored: u64,
    duplicates: u64,
    rejected: u64,
    progress: indicatif::ProgressBar,
}

impl Handler for Storing {
    fn handle(&mut self, p: &Publish) -> Result<Handled> {
        let device = crate::mqtt::device_of_topic(&p.topic);
        let received = i64::try_from(crate::clock::now_unix_nano()).unwrap_or(i64::MAX);
        let row = Telemetry::decode(p.payload.as_ref())
            .map_err(|e| e.to_string())
            .and_then(|t| TelemetryRow::from_telemetry(&t, device, received));
        match row {
            Ok(r) => {
                self.rows.push(r);
                Ok(Handled::Counted)
            }
            Err(e) => {
                // It can never be stored; acknowledging it keeps it from
                // blocking the session forever.
                crate::note!(
                    "warning: {}: undecodable Telemetry ({} bytes): {e}; skipped",
                    p.topic,
                    p.payload.len()
                );
                Ok(Handled::Skipped)
            }
        }
    }

    fn commit(&mut self) -> impl Future<Output = Result<()>> + Send {
        self.write_batch()
    }

    fn batching(&self) -> Batching {
        self.batching
    }

    fn subscribed(&mut self, resumed: bool) {
        if resumed {
            crate::note!("sink: resumed the session subscribed to {}", self.topic);
        } else {
            crate::note!("sink: subscribed to {}", self.topic);
        }
    }
}

impl Storing {
    /// Commits the open batch, retrying with backoff while the store fails;
    /// a stop request meanwhile gives up (nothing is acknowledged then).
    async fn write_batch(&mut self) -> Result<()> {
        let mut backoff = Backoff::new(STORE_RETRY_MIN, STORE_RETRY_MAX);
        // A stop that is already being handled (the final commit) does not
        // count; the next one does.
        let seen = self.shutdown.requests();
        loop {
            match self.store.write_batch(&self.rows).await {
                Ok(w) => {
                    self.stored += w.stored as u64;
                    self.duplicates += w.duplicates as u64;
                    self.rejected += w.rejected as u64;
                    break;
                }
                Err(e) => {
                    let delay = backoff.next_delay();
                    // Nothing is acknowledged: the broker keeps the messages.
                    crate::note!(
                        "sink: store failed: {e:#}; retrying in {} ms (messages stay with the broker)",
                        delay.as_millis()
                    );
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = self.shutdown.wait_beyond(seen) => bail!(
                            "stopped while the store was failing; {} messages were not acknowledged and stay with the broker",
                            self.rows.len()
                        ),
                    }
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
        self.progress
            .set_message(format!("{} rows stored", self.stored));
        Ok(())
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

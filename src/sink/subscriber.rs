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
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use crate::mqtt::Message;
use anyhow::{bail, Result};
use prost::Message as _;
use rumqttc::QoS;

use super::{redact, Batch, SinkOptions, SinkUrl, Store, Tables, TelemetryRow};
use crate::mqtt::Endpoint;
use crate::pipeline::quarantine::{payload_problem, DeadLetterFile, Rejected};
use crate::pipeline::{self, Backoff, Batching, Handled, Handler, Shutdown, SubscribeConfig};
use crate::proto::Telemetry;

/// Delays between attempts to commit while the store fails.
const STORE_RETRY_MIN: Duration = Duration::from_millis(200);
const STORE_RETRY_MAX: Duration = Duration::from_secs(10);

/// A stable client id per destination, so a restarted sink resumes its
/// session. `topics`: the user schema's filters (empty for mqttkit's own
/// telemetry), so a schema's sink never resumes the built-in one's session.
pub fn default_client_id(sink_url: &str, device_id: Option<&str>, topics: &str) -> String {
    // FNV-1a: stable across builds and platforms, unlike std's hasher.
    let mut h: u64 = 0xcbf29ce484222325;
    let salt = topics.bytes();
    for b in (sink_url.bytes().chain(device_id.unwrap_or("+").bytes())).chain(salt) {
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
    tables: Tables,
    store: Store,
    batching: Batching,
    /// Where quarantined messages' payloads go when not into the store.
    dead_letter: Option<DeadLetterFile>,
}

impl Sink {
    /// `default_dead_letter`: the dead-letter directory without `--dead-letter`
    /// (used for stores that do not keep payloads: InfluxDB, Timestream).
    /// `tables`: mqttkit's telemetry, or a schema's types (each in its table).
    pub async fn open(
        opts: &SinkOptions,
        default_dead_letter: &Path,
        tables: Tables,
    ) -> Result<Sink> {
        let Some(raw_url) = opts.sink.clone() else {
            bail!("--sink: no URL given; pass --sink sqlite:PATH (or another store URL)");
        };
        let url: SinkUrl = raw_url.parse()?;
        let store = Store::open(&url, &tables).await?;
        let dead_letter = match &opts.dead_letter {
            Some(dir) => Some(DeadLetterFile::new(dir)),
            None if !store.keeps_payloads() => Some(DeadLetterFile::new(default_dead_letter)),
            None => None,
        };
        Ok(Sink {
            raw_url,
            url,
            tables,
            store,
            batching: Batching {
                max_wait: Duration::from_millis(opts.batch_ms.max(1)),
                max_messages: opts.batch_size.max(1) as usize,
            },
            dead_letter,
        })
    }

    pub fn default_client_id(&self, device_id: Option<&str>, filters: &[String]) -> String {
        let topics = match self.tables {
            Tables::Telemetry => String::new(),
            Tables::User(_) => filters.join(" "),
        };
        default_client_id(&self.raw_url, device_id, &topics)
    }

    /// Where quarantined messages are kept, for people.
    fn quarantine_place(&self) -> String {
        let file = self
            .dead_letter
            .as_ref()
            .map(|f| f.path().display().to_string());
        let store = match self.store.keeps_rejected() {
            true => Some(format!("`rejected` in {}", redact(&self.raw_url))),
            false => None,
        };
        [file, store]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(" and ")
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
        if let Tables::User(t) = &self.tables {
            for t in &t.tables {
                crate::note!(
                    "sink: {} -> table {}, {}",
                    t.message.full_name(),
                    t.name,
                    t.key.describe()
                );
            }
        }
        if cfg.qos == QoS::AtMostOnce {
            crate::note!("sink: QoS 0: messages are not acknowledged; what arrives while the sink is down or before a crash's last commit is lost");
        }
        let shutdown = Shutdown::install();
        let mut h = Storing {
            place: self.quarantine_place(),
            store: self.store,
            url: self.url,
            batching: self.batching,
            shutdown: shutdown.clone(),
            rows: Batch::new(&self.tables),
            tables: self.tables,
            sources: Vec::new(),
            rejects: Vec::new(),
            dead_letter: self.dead_letter,
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
            "sink: stored {} messages ({} already there){}; {} reconnects",
            h.stored,
            h.duplicates,
            match h.rejected {
                0 => String::new(),
                n => format!(", {n} rejected (kept in {})", h.place),
            },
            summary.reconnects
        );
        Ok(ExitCode::SUCCESS)
    }
}

struct Storing {
    store: Store,
    url: SinkUrl,
    tables: Tables,
    batching: Batching,
    shutdown: Shutdown,
    topic: String,
    /// The open batch, and the message each row came from.
    rows: Batch,
    sources: Vec<Message>,
    /// Quarantined, not yet written to the dead-letter place.
    rejects: Vec<Rejected>,
    dead_letter: Option<DeadLetterFile>,
    /// Where quarantined messages go, for the warnings.
    place: String,
    stored: u64,
    duplicates: u64,
    rejected: u64,
    progress: indicatif::ProgressBar,
}

/// The row a message is, or why it can never be one.
fn decode_row(p: &Message) -> Result<TelemetryRow, String> {
    if let Some(problem) = payload_problem(&p.payload, "Telemetry") {
        return Err(problem);
    }
    let t = Telemetry::decode(p.payload.as_ref())
        .map_err(|e| format!("not a Telemetry message ({e})"))?;
    let device = crate::mqtt::device_of_topic(&p.topic);
    let received = i64::try_from(crate::clock::now_unix_nano()).unwrap_or(i64::MAX);
    TelemetryRow::from_telemetry(&t, device, received)
}

impl Handler for Storing {
    fn handle(&mut self, p: &Message) -> Result<Handled> {
        // The row goes into the batch; what can never be one is quarantined.
        match (&self.tables, &mut self.rows) {
            (Tables::Telemetry, Batch::Telemetry(rows)) => match decode_row(p) {
                Ok(r) => rows.push(r),
                Err(reason) => return Ok(self.reject(Rejected::new(p, reason))),
            },
            (Tables::User(t), Batch::User(rows)) => match t.row(p) {
                Ok(r) => rows.push(r),
                Err(unfit) => {
                    let r = Rejected {
                        device_id: unfit.device_id,
                        ..Rejected::new(p, unfit.reason)
                    };
                    return Ok(self.reject(r));
                }
            },
            _ => unreachable!("the batch is made for its tables"),
        }
        self.sources.push(p.clone());
        Ok(Handled::Counted)
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
    /// It can never be stored: quarantined and acknowledged, so it cannot
    /// block the session.
    fn reject(&mut self, r: Rejected) -> Handled {
        r.warn(&self.place);
        self.rejects.push(r);
        Handled::Skipped
    }

    /// Commits the open batch, retrying with backoff while the store fails;
    /// a stop request meanwhile gives up (nothing is acknowledged then).
    async fn write_batch(&mut self) -> Result<()> {
        let mut backoff = Backoff::new(STORE_RETRY_MIN, STORE_RETRY_MAX);
        // A stop that is already being handled (the final commit) does not
        // count; the next one does.
        let seen = self.shutdown.requests();
        while let Err(e) = self.try_commit().await {
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
                    self.rows.len() + self.rejects.len()
                ),
            }
            // A dropped database connection needs a new one.
            match Store::open(&self.url, &self.tables).await {
                Ok(s) => self.store = s,
                Err(e) => tracing::debug!("reopening the store: {e:#}"),
            }
        }
        self.progress
            .set_message(format!("{} rows stored", self.stored));
        Ok(())
    }

    /// The rows (a row the store refuses for its content is quarantined),
    /// then the quarantined messages; each step is done once.
    async fn try_commit(&mut self) -> Result<()> {
        if !self.rows.is_empty() {
            let w = self.store.write_batch(&self.rows).await?;
            self.stored += w.stored as u64;
            self.duplicates += w.duplicates as u64;
            for (i, why) in w.refused {
                let r = Rejected::new(&self.sources[i], why);
                self.reject(r);
            }
            tracing::debug!("committed {} rows", self.rows.len());
            self.rows.clear();
            self.sources.clear();
        }
        if !self.rejects.is_empty() {
            if let Some(file) = &mut self.dead_letter {
                file.append(&self.rejects)?;
            }
            self.store.quarantine(&self.rejects).await?;
            self.rejected += self.rejects.len() as u64;
            self.rejects.clear();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_id_is_stable_and_per_destination() {
        let a = default_client_id("sqlite:a.db", None, "");
        assert_eq!(a, default_client_id("sqlite:a.db", None, ""));
        assert_ne!(a, default_client_id("sqlite:b.db", None, ""));
        assert_ne!(a, default_client_id("sqlite:a.db", Some("d1"), ""));
        assert_ne!(
            a,
            default_client_id("sqlite:a.db", None, "plant/+/+/metrics")
        );
        assert!(a.starts_with("mqttkit-sink-") && a.len() <= 23);
    }
}

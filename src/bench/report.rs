//! Merging the devices' and subscribers' results into one report, its text
//! and JSON forms, live progress and memory readings.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

use super::device::DeviceResult;
use super::payload::PayloadKind;
use super::subscriber::{histogram, SubResult};
use super::Live;

/// This process's resident memory now, in KiB; 0 where unavailable.
pub fn rss_kib() -> u64 {
    use sysinfo::{ProcessRefreshKind, ProcessesToUpdate, System};
    let Ok(pid) = sysinfo::get_current_pid() else {
        return 0;
    };
    let mut sys = System::new();
    sys.refresh_processes_specifics(
        ProcessesToUpdate::Some(&[pid]),
        false,
        ProcessRefreshKind::nothing().with_memory(),
    );
    sys.process(pid).map_or(0, |p| p.memory() / 1024)
}

/// This process's peak resident memory, in KiB (getrusage); 0 where unavailable.
pub fn peak_rss_kib() -> u64 {
    use nix::sys::resource::{getrusage, UsageWho};
    let max = getrusage(UsageWho::RUSAGE_SELF).map_or(0, |u| u.max_rss().max(0) as u64);
    // ru_maxrss is in KiB on Linux and in bytes on macOS.
    if cfg!(target_os = "macos") {
        max / 1024
    } else {
        max
    }
}

/// A live status line on stderr, only when it is a terminal.
pub struct Progress {
    bar: indicatif::ProgressBar,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Progress {
    pub fn start(live: Arc<Live>, devices: usize) -> Self {
        let bar = crate::output::spinner("bench");
        let task = (!bar.is_hidden()).then(|| {
            let bar = bar.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(250));
                loop {
                    tick.tick().await;
                    bar.set_message(format!(
                        "connected {}/{devices}, published {}, delivered {}",
                        live.connected.load(Ordering::Relaxed),
                        live.published.load(Ordering::Relaxed),
                        live.delivered.load(Ordering::Relaxed),
                    ));
                }
            })
        });
        Progress { bar, task }
    }

    pub fn finish(&self) {
        if let Some(t) = &self.task {
            t.abort();
        }
        self.bar.finish_and_clear();
    }
}

pub struct Inputs {
    pub broker: String,
    pub qos: u8,
    pub subscribers: usize,
    pub per_device_identities: bool,
    pub rate: Option<f64>,
    pub payload: PayloadKind,
    /// `--schema`: the map's telemetry type, published instead of `payload`.
    pub message_type: Option<String>,
    pub connect_elapsed: Duration,
    pub publish_elapsed: Duration,
    pub start: Instant,
    pub baseline_rss: u64,
    pub connected_rss: u64,
    pub devices: Vec<DeviceResult>,
    pub subs: Vec<SubResult>,
}

#[derive(Debug, Serialize)]
pub struct Connect {
    pub connected: u64,
    pub failed: u64,
    pub elapsed_s: f64,
    pub handshakes_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

#[derive(Debug, Serialize)]
pub struct Latency {
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub min_ms: f64,
    pub mean_ms: f64,
    /// Messages whose receive time was before their send time (clock steps): counted as 0.
    pub below_zero: u64,
}

#[derive(Debug, Serialize)]
pub struct Memory {
    pub baseline_rss_kib: u64,
    /// RSS with every connection up, before publishing.
    pub connected_rss_kib: u64,
    /// Peak RSS of the process (getrusage's ru_maxrss), including message buffers.
    pub peak_rss_kib: u64,
    /// (connected RSS - baseline) / connections: certificate, TLS and MQTT state of one idle connection.
    pub per_connection_kib: f64,
}

#[derive(Debug, Serialize)]
pub struct PerDevice {
    pub device_id: String,
    pub connected: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connect_ms: Option<f64>,
    pub published: u64,
    pub acked: u64,
    /// Acknowledged with a failure reason code (MQTT 5): refused, not lost.
    pub refused: u64,
    /// Messages received by all subscribers together (with duplicates).
    pub delivered: u64,
    /// published x subscribers - distinct (seq, subscriber) pairs received.
    pub lost: u64,
    pub duplicated: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct BenchReport {
    pub broker: String,
    pub qos: u8,
    pub devices: usize,
    pub subscribers: usize,
    /// `per-device` (ephemeral certificate per device) or `shared`.
    pub identities: &'static str,
    pub payload: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_per_device: Option<f64>,
    pub connect: Connect,
    pub published: u64,
    /// PUBACKs received (QoS 1; 0 at QoS 0).
    pub acked: u64,
    /// PUBACKs with a failure reason code (MQTT 5, e.g. 0x87 not
    /// authorized): counted apart from `lost`.
    pub refused: u64,
    pub publish_elapsed_s: f64,
    pub published_per_s: f64,
    /// published x subscribers.
    pub expected: u64,
    pub delivered: u64,
    pub lost: u64,
    pub duplicated: u64,
    /// From the start signal to the last delivery.
    pub deliver_elapsed_s: f64,
    pub delivered_per_s: f64,
    pub latency: Latency,
    /// Received messages that were not bench Telemetry (other publishers).
    pub foreign: u64,
    pub memory: Memory,
    pub problems: Vec<String>,
    pub ok: bool,
    pub per_device: Vec<PerDevice>,
}

fn ms(us: u64) -> f64 {
    round3(us as f64 / 1000.0)
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

fn per_s(n: u64, d: Duration) -> f64 {
    let s = d.as_secs_f64();
    if s > 0.0 {
        (n as f64 / s * 10.0).round() / 10.0
    } else {
        0.0
    }
}

pub fn build(inp: Inputs) -> BenchReport {
    let m = inp.subscribers as u64;
    let rx = Received::merge(&inp.subs, &inp.devices);
    let (per_device, t) = per_device(&inp.devices, &rx.per_device, m);
    let mut problems = rx.problems;
    problems.extend(device_problems(&t, inp.devices.len(), inp.qos, m));
    let deliver_elapsed = rx
        .last_delivery
        .map(|d| d.saturating_duration_since(inp.start))
        .unwrap_or_default();
    let ok = problems.is_empty();
    BenchReport {
        broker: inp.broker,
        qos: inp.qos,
        devices: inp.devices.len(),
        subscribers: inp.subscribers,
        identities: if inp.per_device_identities {
            "per-device"
        } else {
            "shared"
        },
        payload: match (inp.message_type, inp.payload) {
            (Some(t), _) => t,
            (None, PayloadKind::Telemetry) => "telemetry".into(),
            (None, PayloadKind::Bytes(n)) => format!("{n} bytes"),
        },
        rate_per_device: inp.rate,
        connect: connect_section(&t, inp.connect_elapsed),
        published: t.published,
        acked: t.acked,
        refused: t.refused,
        publish_elapsed_s: round3(inp.publish_elapsed.as_secs_f64()),
        published_per_s: per_s(t.published, inp.publish_elapsed),
        expected: t.published * m,
        delivered: t.delivered,
        lost: t.lost,
        duplicated: t.duplicated,
        deliver_elapsed_s: round3(deliver_elapsed.as_secs_f64()),
        delivered_per_s: per_s(t.delivered, deliver_elapsed),
        latency: latency_section(&rx.latency, rx.below_zero),
        foreign: rx.foreign,
        memory: memory_section(
            inp.baseline_rss,
            inp.connected_rss,
            t.connected + inp.subscribers as u64,
        ),
        problems,
        ok,
        per_device,
    }
}

/// What the subscribers received, merged over all of them.
struct Received<'a> {
    latency: Histogram<u64>,
    below_zero: u64,
    last_delivery: Option<Instant>,
    /// (received, distinct) per bench device.
    per_device: HashMap<&'a str, (u64, u64)>,
    /// Undecodable messages and those of devices not in this bench.
    foreign: u64,
    /// The subscribers' own errors.
    problems: Vec<String>,
}

impl<'a> Received<'a> {
    fn merge(subs: &'a [SubResult], devices: &[DeviceResult]) -> Self {
        let mut r = Received {
            latency: histogram(),
            below_zero: 0,
            last_delivery: None,
            per_device: HashMap::new(),
            foreign: 0,
            problems: Vec::new(),
        };
        let ids: HashSet<&str> = devices.iter().map(|d| d.device_id.as_str()).collect();
        for s in subs {
            r.latency.add(&s.latency_us).expect("same histogram bounds");
            r.below_zero += s.below_zero;
            r.foreign += s.undecodable;
            r.last_delivery = r.last_delivery.max(s.last_delivery);
            if let Some(e) = &s.error {
                r.problems.push(e.clone());
            }
            for (id, seen) in &s.seen {
                if ids.contains(id.as_str()) {
                    let e = r.per_device.entry(id.as_str()).or_default();
                    e.0 += seen.received;
                    e.1 += seen.distinct;
                } else {
                    r.foreign += seen.received;
                }
            }
        }
        r
    }
}

/// Sums over the devices.
struct Totals {
    connect_us: Histogram<u64>,
    connected: u64,
    failed: u64,
    published: u64,
    acked: u64,
    refused: u64,
    delivered: u64,
    lost: u64,
    duplicated: u64,
    /// "device: error", in device order.
    errors: Vec<String>,
}

/// Each device's line of the report, and their sums; `m` is the number of subscribers.
fn per_device(
    devices: &[DeviceResult],
    rx: &HashMap<&str, (u64, u64)>,
    m: u64,
) -> (Vec<PerDevice>, Totals) {
    let mut t = Totals {
        connect_us: histogram(),
        connected: 0,
        failed: 0,
        published: 0,
        acked: 0,
        refused: 0,
        delivered: 0,
        lost: 0,
        duplicated: 0,
        errors: Vec::new(),
    };
    let mut lines = Vec::with_capacity(devices.len());
    for d in devices {
        if let Some(us) = d.connect_us {
            t.connect_us.saturating_record(us);
        }
        if d.connected {
            t.connected += 1;
        } else {
            t.failed += 1;
        }
        let (received, distinct) = rx.get(d.device_id.as_str()).copied().unwrap_or_default();
        // What the broker refused never reaches a subscriber, and is not lost.
        let lost = ((d.published - d.refused.min(d.published)) * m).saturating_sub(distinct);
        let duplicated = received - distinct;
        t.published += d.published;
        t.acked += d.acked;
        t.refused += d.refused;
        t.delivered += received;
        t.lost += lost;
        t.duplicated += duplicated;
        if let Some(e) = &d.error {
            t.errors.push(format!("{}: {e}", d.device_id));
        }
        lines.push(PerDevice {
            device_id: d.device_id.clone(),
            connected: d.connected,
            connect_ms: d.connect_us.map(ms),
            published: d.published,
            acked: d.acked,
            refused: d.refused,
            delivered: received,
            lost,
            duplicated,
            error: d.error.clone(),
        });
    }
    (lines, t)
}

/// Failed devices, and at QoS 1 lost or unacknowledged messages.
fn device_problems(t: &Totals, devices: usize, qos: u8, m: u64) -> Vec<String> {
    let mut problems = Vec::new();
    if t.failed > 0 {
        problems.push(format!(
            "{} of {devices} devices did not connect (first: {}); if many failed, check the broker's open-file limit (`ulimit -n` where it was started) and its log, or lower --connect-parallel",
            t.failed,
            t.errors.first().map(String::as_str).unwrap_or("?")
        ));
    } else if let Some(first) = t.errors.first() {
        problems.push(format!(
            "{} device(s) failed while publishing (first: {first})",
            t.errors.len()
        ));
    }
    if qos == 1 && t.lost > 0 {
        problems.push(format!(
            "{} QoS 1 message(s) lost: published x subscribers = {}, distinct received = {}",
            t.lost,
            t.published * m,
            t.delivered - t.duplicated
        ));
    }
    if t.refused > 0 {
        problems.push(format!(
            "{} QoS 1 message(s) refused by the broker (a failure reason code in the PUBACK, e.g. 0x87 not authorized: the identity may not publish there)",
            t.refused
        ));
    }
    if qos == 1 && t.acked < t.published {
        problems.push(format!(
            "{} QoS 1 message(s) written but never acknowledged by the broker",
            t.published - t.acked
        ));
    }
    problems
}

fn connect_section(t: &Totals, elapsed: Duration) -> Connect {
    Connect {
        connected: t.connected,
        failed: t.failed,
        elapsed_s: round3(elapsed.as_secs_f64()),
        handshakes_per_s: per_s(t.connected, elapsed),
        p50_ms: ms(t.connect_us.value_at_quantile(0.5)),
        p99_ms: ms(t.connect_us.value_at_quantile(0.99)),
        max_ms: ms(t.connect_us.max()),
    }
}

fn latency_section(latency: &Histogram<u64>, below_zero: u64) -> Latency {
    Latency {
        p50_ms: ms(latency.value_at_quantile(0.5)),
        p95_ms: ms(latency.value_at_quantile(0.95)),
        p99_ms: ms(latency.value_at_quantile(0.99)),
        max_ms: ms(latency.max()),
        min_ms: ms(latency.min()),
        mean_ms: round3(latency.mean() / 1000.0),
        below_zero,
    }
}

fn memory_section(baseline_rss: u64, connected_rss: u64, connections: u64) -> Memory {
    let per_connection_kib = if connections > 0 {
        (connected_rss.saturating_sub(baseline_rss) as f64 / connections as f64 * 10.0).round()
            / 10.0
    } else {
        0.0
    };
    Memory {
        baseline_rss_kib: baseline_rss,
        connected_rss_kib: connected_rss,
        peak_rss_kib: peak_rss_kib(),
        per_connection_kib,
    }
}

/// The human-readable report (stdout).
pub fn render(r: &BenchReport) -> String {
    let mut s = String::new();
    let rate = r
        .rate_per_device
        .map(|x| format!(", {x} msg/s per device"))
        .unwrap_or_else(|| ", unthrottled".into());
    let _ = writeln!(
        s,
        "bench {}: {} devices ({} identities), {} subscriber(s), QoS {}, payload {}{rate}",
        r.broker, r.devices, r.identities, r.subscribers, r.qos, r.payload
    );
    let c = &r.connect;
    let _ = writeln!(
        s,
        "connect    {} connected, {} failed in {:.2} s: {:.1} handshakes/s, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        c.connected, c.failed, c.elapsed_s, c.handshakes_per_s, c.p50_ms, c.p99_ms, c.max_ms
    );
    let acked = if r.qos == 1 && r.refused > 0 {
        format!(", acked {} (refused {})", r.acked, r.refused)
    } else if r.qos == 1 {
        format!(", acked {}", r.acked)
    } else {
        String::new()
    };
    let _ = writeln!(
        s,
        "publish    {}{acked} in {:.2} s: {:.1} msg/s",
        r.published, r.publish_elapsed_s, r.published_per_s
    );
    let _ = writeln!(
        s,
        "deliver    {} of {} expected, lost {}, duplicated {} in {:.2} s: {:.1} msg/s",
        r.delivered, r.expected, r.lost, r.duplicated, r.deliver_elapsed_s, r.delivered_per_s
    );
    let l = &r.latency;
    let _ = writeln!(
        s,
        "latency    p50 {:.3} ms, p95 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
        l.p50_ms, l.p95_ms, l.p99_ms, l.max_ms
    );
    let mem = &r.memory;
    let _ = writeln!(
        s,
        "memory     peak RSS {:.1} MiB, {:.1} KiB per connection ({} connections)",
        mem.peak_rss_kib as f64 / 1024.0,
        mem.per_connection_kib,
        r.connect.connected + r.subscribers as u64
    );
    s.push_str(&render_troubled(r));
    s
}

/// The devices that lost, duplicated or failed (the first 20), and the
/// messages of other publishers.
fn render_troubled(r: &BenchReport) -> String {
    let mut s = String::new();
    let troubled: Vec<&PerDevice> = r
        .per_device
        .iter()
        .filter(|d| d.lost > 0 || d.duplicated > 0 || d.error.is_some())
        .collect();
    if !troubled.is_empty() {
        let rows = troubled
            .iter()
            .take(20)
            .map(|d| {
                vec![
                    crate::telemetry::Escaped(&d.device_id).to_string(),
                    d.published.to_string(),
                    d.delivered.to_string(),
                    d.lost.to_string(),
                    d.duplicated.to_string(),
                    d.error.clone().unwrap_or_default(),
                ]
            })
            .collect();
        s.push_str(&crate::output::table(
            &[
                "DEVICE",
                "PUBLISHED",
                "DELIVERED",
                "LOST",
                "DUPLICATED",
                "ERROR",
            ],
            &[false, true, true, true, true, false],
            rows,
        ));
    }
    if troubled.len() > 20 {
        let _ = writeln!(
            s,
            "... and {} more devices (see --json)",
            troubled.len() - 20
        );
    }
    if r.foreign > 0 {
        let _ = writeln!(
            s,
            "({} messages from other publishers were ignored)",
            r.foreign
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_readings() {
        let rss = rss_kib();
        assert!(rss > 0);
        assert!(peak_rss_kib() >= rss / 2, "{} {rss}", peak_rss_kib());
    }
}

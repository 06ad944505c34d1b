//! `mqttkit bench`: N simulated devices (each its own mTLS connection and, when
//! the CA key is at hand, its own ephemeral client certificate) publishing
//! real `Telemetry` to M server subscribers; reports connect times, rates,
//! loss and duplicates per device, end-to-end latency and memory.

mod device;
mod payload;
mod report;
mod schema;
mod subscriber;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use rumqttc::QoS;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::mqtt::{
    telemetry_topic, tls, unique_client_id, ConnectSpec, ConnectionArgs, Endpoint, Role,
};
use crate::pipeline::{Shutdown, Trigger};
use crate::pki::KeyType;

pub use payload::PayloadKind;

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub conn: ConnectionArgs,
    /// Simulated devices, each its own MQTT connection.
    #[arg(long, value_name = "N", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub devices: u32,
    /// Server subscribers on devices/+/telemetry; each receives every message.
    #[arg(long, value_name = "M", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub subscribers: u32,
    /// QoS of publishing and subscribing (1: every message acknowledged; loss is an error).
    #[arg(long, short = 'q', default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=1))]
    pub qos: u8,
    /// Messages per second per device (default: as fast as the connection allows).
    #[arg(long, value_name = "PER_DEVICE_MSG_PER_S")]
    pub rate: Option<f64>,
    /// Publish for this long: 10s, 1m, 0.5 (a bare number is seconds; default: 10s, unless --count).
    #[arg(long, value_name = "DURATION", conflicts_with = "count", value_parser = crate::units::parse_positive_duration)]
    pub duration: Option<Duration>,
    /// Messages per device.
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
    /// `telemetry` (dummy sensor readings) or a size (a Telemetry padded to it): 256, 1KB (1000 bytes), 1KiB (1024 bytes).
    #[arg(long, value_name = "telemetry|SIZE", default_value = "telemetry", value_parser = payload::parse_payload)]
    pub payload: PayloadKind,
    /// Most device TLS handshakes in progress at once.
    #[arg(long, value_name = "N", default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub connect_parallel: u32,
    /// QoS 1 messages in flight (sent, not yet acknowledged) per device.
    #[arg(long, value_name = "N", default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..=16384))]
    pub inflight: u16,
    /// After publishing ends, stop waiting for deliveries once none arrived for this long: 3s, 500ms (a bare number is seconds).
    #[arg(long, value_name = "DURATION", default_value = "3s", value_parser = crate::units::parse_positive_duration)]
    pub drain_idle: Duration,
    /// Largest message a subscriber takes from the broker: 256MiB (the
    /// default, MQTT's limit), 1MiB; a larger one ends the subscriber with an error.
    #[arg(long, value_name = "SIZE", default_value = "256MiB", value_parser = crate::pipeline::parse_max_packet)]
    pub max_packet: usize,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Publish the map's telemetry type on its telemetry topic (latency
    /// from its mapped time field) instead of mqttkit's Telemetry.
    #[command(flatten)]
    pub schema: crate::schema::SchemaArgs,
    /// A value for a {label} of the schema's telemetry topic (repeatable), e.g. --label site=osaka.
    #[arg(long = "label", value_name = "NAME=VALUE", value_parser = crate::schema::args::parse_label)]
    pub labels: Vec<(String, String)>,
}

/// Counters for the live progress line and the drain phase.
#[derive(Debug, Default)]
pub struct Live {
    pub connected: AtomicU64,
    pub published: AtomicU64,
    pub delivered: AtomicU64,
}

/// How the simulated devices authenticate.
enum Identities {
    /// One ephemeral certificate per device, CN = its device id.
    PerDevice,
    /// Everyone shares the resolved identity; `devices/<shared>/telemetry`.
    Shared(String),
}

pub async fn run(args: BenchArgs) -> Result<ExitCode> {
    let duration = validate(&args)?;
    let schema = schema::BenchSchema::load(&args.schema, &args.labels)?.map(Arc::new);
    if schema.is_some() && args.payload != PayloadKind::Telemetry {
        bail!("--payload: with --schema every payload is the map's telemetry type; drop --payload");
    }
    let n = args.devices as usize;
    let m = args.subscribers as usize;
    raise_fd_limit(n + m)?;
    let baseline_rss = report::rss_kib();

    let server = args.conn.spec()?.resolve(Role::Server)?;
    let (identities, device_specs) =
        device_specs(&args.conn.spec()?, &server, n, schema.as_deref())?;
    note_identities(&identities, &server, n);
    let qos = crate::pipeline::qos(args.qos);
    let live = Arc::new(Live::default());
    let progress = report::Progress::start(live.clone(), n);

    // Subscribers first: connected and subscribed before any device publishes.
    let subs = match Subscribers::start(&server, (qos, args.max_packet), &schema, &live, m).await {
        Ok(subs) => subs,
        Err(e) => {
            progress.finish();
            return Err(e);
        }
    };
    let plan = Arc::new(device::Plan {
        qos,
        rate: args.rate,
        count: args.count,
        payload: args.payload,
        schema: schema.clone(),
        inflight: args.inflight,
        devices: n,
        handshakes: Arc::new(Semaphore::new(args.connect_parallel as usize)),
        live: live.clone(),
    });
    let devices = Devices::connect(device_specs, plan).await;
    let connected_rss = report::rss_kib();
    let published = devices.publish(duration).await?;

    let sent: u64 = published.results.iter().map(|r| r.published).sum();
    drain(&live, &subs.tasks, sent * m as u64, args.drain_idle).await;
    let sub_results = subs.finish().await?;
    progress.finish();

    let rep = report::build(report::Inputs {
        broker: server.describe(),
        qos: args.qos,
        subscribers: m,
        per_device_identities: matches!(identities, Identities::PerDevice),
        rate: args.rate,
        payload: args.payload,
        message_type: schema.as_ref().map(|s| s.type_name().to_string()),
        connect_elapsed: published.connect_elapsed,
        publish_elapsed: published.elapsed,
        start: published.start.into_std(),
        baseline_rss,
        connected_rss,
        devices: published.results,
        subs: sub_results,
    });
    print(&rep, args.json)
}

/// Checks what clap cannot; returns how long to publish (None: until --count).
fn validate(args: &BenchArgs) -> Result<Option<Duration>> {
    if let Some(rate) = args.rate {
        if !(rate.is_finite() && rate > 0.0) {
            bail!("--rate {rate}: must be a positive number of messages per second per device, e.g. --rate 10");
        }
    }
    if args.count == Some(0) {
        bail!("--count 0: must be at least 1 message per device");
    }
    Ok(match (args.count, args.duration) {
        (Some(_), _) => None,
        (None, d) => Some(d.unwrap_or(Duration::from_secs(10))),
    })
}

/// Says up front what the report cannot tell apart.
fn note_identities(identities: &Identities, server: &Endpoint, n: usize) {
    if let Identities::Shared(id) = identities {
        crate::note!(
            "bench: no CA key to issue per-device certificates (or a fixed --cert/profile identity): all {n} devices connect as '{id}' and publish to {}; loss is still counted per simulated device from the payload",
            telemetry_topic(id)
        );
    }
    if server.client_id.is_some() {
        crate::note!("bench: ignoring the fixed client id: each connection gets its own");
    }
}

/// The server subscribers' tasks and the trigger that ends them.
struct Subscribers {
    stop: Trigger,
    tasks: Vec<JoinHandle<subscriber::SubResult>>,
}

impl Subscribers {
    /// Starts `m` subscribers and returns once each is subscribed.
    async fn start(
        server: &Endpoint,
        (qos, max_packet): (QoS, usize),
        schema: &Option<Arc<schema::BenchSchema>>,
        live: &Arc<Live>,
        m: usize,
    ) -> Result<Self> {
        let (stop, sub_stop) = Shutdown::manual();
        let (ready_tx, mut ready) = mpsc::channel(m);
        let mut tasks = Vec::with_capacity(m);
        for _ in 0..m {
            tasks.push(tokio::spawn(subscriber::run(
                server.clone(),
                (qos, max_packet),
                schema.clone(),
                live.clone(),
                ready_tx.clone(),
                sub_stop.clone(),
            )));
        }
        drop(ready_tx);
        for _ in 0..m {
            match ready.recv().await {
                Some(Ok(())) => {}
                Some(Err(e)) => bail!("{e}"),
                None => bail!("a subscriber stopped before subscribing"),
            }
        }
        Ok(Subscribers { stop, tasks })
    }

    /// Stops the subscribers and collects what each received.
    async fn finish(self) -> Result<Vec<subscriber::SubResult>> {
        self.stop.stop();
        let mut results = Vec::with_capacity(self.tasks.len());
        for s in self.tasks {
            results.push(s.await.context("a subscriber task failed")?);
        }
        Ok(results)
    }
}

/// Drains: waits until everything arrived, every subscriber ended, or
/// nothing arrived for `idle`.
async fn drain(
    live: &Live,
    subs: &[JoinHandle<subscriber::SubResult>],
    expected: u64,
    idle: Duration,
) {
    let mut last = live.delivered.load(Ordering::Relaxed);
    let mut last_change = Instant::now();
    loop {
        let now = live.delivered.load(Ordering::Relaxed);
        if now >= expected || subs.iter().all(|s| s.is_finished()) {
            break;
        }
        if now != last {
            last = now;
            last_change = Instant::now();
        } else if last_change.elapsed() >= idle {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The connected devices, waiting for the start signal.
struct Devices {
    tasks: Vec<JoinHandle<device::DeviceResult>>,
    go: watch::Sender<Option<Instant>>,
    stop: watch::Sender<bool>,
    connect_elapsed: Duration,
}

/// What the publishing phase produced.
struct Published {
    results: Vec<device::DeviceResult>,
    start: Instant,
    elapsed: Duration,
    connect_elapsed: Duration,
}

impl Devices {
    /// Connects the devices in bounded parallel batches (`Plan::handshakes`);
    /// returns once each is connected or has failed.
    async fn connect(specs: Vec<device::DeviceSpec>, plan: Arc<device::Plan>) -> Self {
        let n = specs.len();
        let (go_tx, go) = watch::channel(None);
        let (stop_tx, stop) = watch::channel(false);
        let (ready_tx, mut ready) = mpsc::channel(n.min(1024));
        let connect_started = Instant::now();
        let mut tasks = Vec::with_capacity(n);
        for spec in specs {
            tasks.push(tokio::spawn(device::run(
                spec,
                plan.clone(),
                ready_tx.clone(),
                go.clone(),
                stop.clone(),
            )));
        }
        drop(ready_tx);
        for _ in 0..n {
            if ready.recv().await.is_none() {
                break;
            }
        }
        Devices {
            tasks,
            go: go_tx,
            stop: stop_tx,
            connect_elapsed: connect_started.elapsed(),
        }
    }

    /// Starts every device at once and waits until all are done (after
    /// `duration`, or their --count).
    async fn publish(self, duration: Option<Duration>) -> Result<Published> {
        let Devices {
            tasks,
            go,
            stop,
            connect_elapsed,
        } = self;
        let start = Instant::now();
        let _ = go.send(Some(start));
        // Without a duration `stop` stays here, open, until the devices are done.
        if let Some(d) = duration {
            tokio::spawn(async move {
                tokio::time::sleep_until(start + d).await;
                let _ = stop.send(true);
            });
        }
        let mut results = Vec::with_capacity(tasks.len());
        for d in tasks {
            results.push(d.await.context("a device task failed")?);
        }
        Ok(Published {
            results,
            start,
            elapsed: start.elapsed(),
            connect_elapsed,
        })
    }
}

/// Prints the report (JSON or text) on stdout and its problems on stderr.
fn print(rep: &report::BenchReport, json: bool) -> Result<ExitCode> {
    if json {
        crate::output::print_json(rep)?;
    } else {
        crate::output::print_stdout(&report::render(rep))?;
    }
    for e in &rep.problems {
        crate::note!("error: {e}");
    }
    Ok(if rep.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Thousands of connections need thousands of descriptors: lift the soft
/// limit to the hard one, and say so up front when even that is too low.
fn raise_fd_limit(connections: usize) -> Result<()> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let needed = connections as u64 + 64;
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return Ok(());
    };
    // "Unlimited" is not a valid soft limit for descriptors.
    let target = hard.min(1 << 20);
    let soft = if soft < target && setrlimit(Resource::RLIMIT_NOFILE, target, hard).is_ok() {
        target
    } else {
        soft
    };
    if soft < needed {
        bail!(
            "--devices/--subscribers: {connections} connections need about {needed} open files but the limit is {soft} (hard {hard}); raise it (`ulimit -n {needed}` as root) or use fewer devices"
        );
    }
    Ok(())
}

/// The devices' identities and connection settings.
fn device_specs(
    conn: &ConnectSpec,
    server: &Endpoint,
    n: usize,
    schema: Option<&schema::BenchSchema>,
) -> Result<(Identities, Vec<device::DeviceSpec>)> {
    let profile = conn.load_profile()?;
    let fixed_identity =
        conn.identity.is_some() || profile.as_ref().is_some_and(|p| p.cert.is_some());
    let certs_dir: PathBuf = profile
        .as_ref()
        .and_then(|p| p.certs_dir.clone())
        .unwrap_or_else(|| crate::pki::certs_dir(&conn.out));
    let names: Vec<String> = (0..n).map(|i| format!("bench-{i:04}")).collect();
    if !fixed_identity && certs_dir.join("ca.key").exists() {
        let issuer = crate::pki::load_issuer(&certs_dir)?;
        let roots = Arc::new(tls::roots_for(server.cafile.as_deref())?);
        let alpn = (server.transport == crate::mqtt::Transport::Alpn).then_some(tls::AWS_IOT_ALPN);
        let mut specs = Vec::with_capacity(n);
        for (index, name) in names.into_iter().enumerate() {
            let key = KeyType::EcdsaP256.generate()?;
            let cert = crate::pki::client_params(&name, 1)
                .signed_by(&key, &issuer)
                .with_context(|| format!("issuing a bench certificate for {name}"))?;
            let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
            let chain: Vec<CertificateDer<'static>> = vec![cert.der().clone()];
            let mut endpoint = server.clone();
            endpoint.tls = tls::client_config_in_memory(roots.clone(), chain, key_der, alpn)?;
            endpoint.identity = None;
            let topic = match schema {
                Some(s) => s.topic(&name)?,
                None => telemetry_topic(&name),
            };
            specs.push(device::DeviceSpec {
                index,
                client_id: unique_client_id(&name),
                topic,
                device_id: name,
                endpoint,
            });
        }
        return Ok((Identities::PerDevice, specs));
    }
    if schema.is_some() {
        bail!("--schema: bench tells devices apart by their topic's {{device}} level, so each needs its own identity: run it where out/certs/ca.key is (bench issues one certificate per device) and without a fixed --cert or profile certificate");
    }
    let shared = conn
        .default_device()?
        .unwrap_or_else(|| crate::pki::DEFAULT_DEVICE.to_string());
    let endpoint = conn.resolve(Role::Device(&shared))?;
    let topic = telemetry_topic(&shared);
    let specs = names
        .into_iter()
        .enumerate()
        .map(|(index, name)| device::DeviceSpec {
            index,
            // The shared identity's namespace: the broker binds client ids to it.
            client_id: crate::mqtt::client_id::unique_within(&endpoint, &name),
            topic: topic.clone(),
            device_id: name,
            endpoint: endpoint.clone(),
        })
        .collect();
    Ok((Identities::Shared(shared), specs))
}

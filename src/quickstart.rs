//! `mqttkit quickstart`: certificates, a running broker with mutual TLS, and a
//! live telemetry + command round trip, in one command.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use prost::Message;
use rumqttc::QoS;

use crate::broker::{self, Runtime};
use crate::mqtt::poller::Poller;
use crate::mqtt::{self, session, Endpoint, Event, Options, Role};
use crate::pki::{self, DEFAULT_DEVICE, DEFAULT_SERVER};
use crate::proto::{Command, Telemetry};
use crate::telemetry::{Escaped, HumanLine};
use crate::{note, output};

#[derive(Debug, Args)]
pub struct QuickstartArgs {
    /// The global `--out DIR` (declared once, in cli.rs).
    #[arg(from_global)]
    pub out: PathBuf,
    /// MQTT over TLS port for the broker.
    #[arg(long, default_value_t = 8883)]
    pub port: u16,
    /// Address the broker listens on (default: all addresses).
    #[arg(long, value_name = "ADDR")]
    pub bind: Option<String>,
    #[arg(long, value_enum, default_value_t)]
    pub runtime: Runtime,
    /// The mosquitto image for the Docker runtime.
    #[arg(long, value_name = "IMAGE", default_value = broker::DEFAULT_IMAGE)]
    pub image: String,
    /// Telemetry messages the demo device sends.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub messages: u64,
    /// JSON lines on stdout instead of text: the pki and `broker up` results,
    /// one object per telemetry message and command received, then {"done": ...}.
    #[arg(long)]
    pub json: bool,
}

/// Where quickstart's own lines go: text for people, JSON lines for scripts.
#[derive(Clone, Copy)]
struct Say {
    json: bool,
}

impl Say {
    fn line(self, text: &str, value: serde_json::Value) -> Result<()> {
        if self.json {
            output::print_json(&value)
        } else {
            output::print_stdout(text)
        }
    }

    fn step(self, n: u8, what: &str) {
        if !self.json {
            let _ = output::print_stdout(&format!("\n== {n}/3 {what}\n"));
        }
    }
}

pub async fn run(args: QuickstartArgs) -> Result<ExitCode> {
    let started = Instant::now();
    let out = &args.out;
    let say = Say { json: args.json };

    say.step(1, "certificates");
    ensure_certificates(out, say)?;

    say.step(2, "broker");
    let running_on = broker::load_state(out)?
        .filter(broker::is_running)
        .map(|s| s.port);
    let port = running_on.unwrap_or(args.port);
    if let Some(p) = running_on {
        if p != args.port {
            note!(
                "a broker from {} is already running on port {p}; using it",
                out.display()
            );
        }
    }
    broker::up(&broker::UpConfig {
        port,
        bind: args.bind.clone(),
        runtime: args.runtime,
        image: args.image.clone(),
        json: args.json,
        ..broker::UpConfig::new(out)
    })
    .await?;

    say.step(3, "live round trip");
    let conn = mqtt::ConnectSpec::local(out);
    let device = conn.resolve(Role::Device(DEFAULT_DEVICE))?;
    let server = conn.resolve(Role::Server)?;
    let demo = tokio::time::timeout(
        Duration::from_secs(30),
        demo(&device, &server, args.messages, say),
    )
    .await
    .context("the demo did not finish within 30 s; check `mqttkit broker logs`")??;

    let summary = format!(
        "\n== done in {:.1?}: {} telemetry message(s) device -> server, 1 command server -> device, mutual TLS on port {port}\n\n\
         next:\n  \
         mqttkit sub telemetry --json                     # the server side: every device's telemetry\n  \
         mqttkit pub telemetry --device-id {DEFAULT_DEVICE} --count 1000   # a device publishing\n  \
         mqttkit pub command --device-id {DEFAULT_DEVICE} --name reboot\n  \
         mqttkit pki issue device-002                     # another device identity\n  \
         mqttkit doctor                                   # check the connection step by step\n  \
         mqttkit broker down                              # stop the broker\n",
        started.elapsed(),
        demo.telemetry
    );
    say.line(
        &summary,
        serde_json::json!({
            "done": true,
            "elapsed_ms": started.elapsed().as_millis(),
            "port": port,
            "telemetry": demo.telemetry,
            "commands": 1,
        }),
    )?;
    Ok(ExitCode::SUCCESS)
}

/// Creates the PKI, or reuses it: an existing CA is never replaced.
fn ensure_certificates(out: &Path, say: Say) -> Result<()> {
    let certs = pki::certs_dir(out);
    if !certs.join("ca.crt").exists() {
        pki::init(&pki::InitConfig {
            json: say.json,
            ..pki::InitConfig::new(out)
        })?;
        return mqtt::profile::ensure_local(out);
    }
    let mut reused = vec!["ca"];
    for (name, server) in [
        ("broker", true),
        (DEFAULT_DEVICE, false),
        (DEFAULT_SERVER, false),
    ] {
        if certs.join(format!("{name}.crt")).exists() {
            reused.push(name);
            continue;
        }
        pki::issue(pki::IssueConfig {
            server,
            json: say.json,
            ..pki::IssueConfig::new(out, name)
        })?;
    }
    say.line(
        &format!(
            "reusing the certificates in {} ({})\n",
            certs.display(),
            reused.join(", ")
        ),
        serde_json::json!({ "reused": reused, "certs": certs }),
    )?;
    if !out.join("profiles/local.toml").exists() {
        mqtt::profile::write_local(out, "localhost", 8883)?;
    }
    Ok(())
}

struct DemoResult {
    telemetry: u64,
}

/// Polls `events` until a SUBACK arrives.
async fn until_suback(events: &mut Poller, who: &str, topic: &str) -> Result<()> {
    loop {
        match events.next().await {
            Ok(Event::SubAck { codes, .. }) => {
                if crate::pipeline::any_refused(&codes) {
                    bail!("the broker refused {who}'s subscription to {topic}");
                }
                return Ok(());
            }
            Ok(_) => {}
            Err(e) => bail!("{who}: {e}"),
        }
    }
}

async fn demo(device: &Endpoint, server: &Endpoint, messages: u64, say: Say) -> Result<DemoResult> {
    let opts = |id: String| Options {
        channel: 100,
        ..Options::new(&id)
    };
    let server_id = mqtt::unique_client_id("quickstart-server");
    let device_id = mqtt::client_id::unique_within(device, "quickstart");
    let (server_client, server_events) = session::open(server, &opts(server_id));
    let (device_client, device_events) = session::open(device, &opts(device_id));
    // Cancel-safe polling: the selects below interrupt the server's polls.
    let (mut server_events, mut device_events) =
        (Poller::new(server_events), Poller::new(device_events));

    server_client
        .subscribe(&[(mqtt::ALL_TELEMETRY.to_string(), QoS::AtLeastOnce)])
        .await?;
    until_suback(&mut server_events, "server", mqtt::ALL_TELEMETRY).await?;
    let commands = mqtt::command_topic(DEFAULT_DEVICE);
    device_client
        .subscribe(&[(commands.clone(), QoS::AtLeastOnce)])
        .await?;
    until_suback(&mut device_events, DEFAULT_DEVICE, &commands).await?;
    say.line(
        &format!(
            "server  subscribed to {}\n{DEFAULT_DEVICE} subscribed to {commands}\n",
            mqtt::ALL_TELEMETRY
        ),
        serde_json::json!({ "subscribed": [mqtt::ALL_TELEMETRY, commands] }),
    )?;

    // The device publishes; the server prints what it decodes.
    let topic = mqtt::telemetry_topic(DEFAULT_DEVICE);
    let device_task = {
        let client = device_client.clone();
        let topic = topic.clone();
        tokio::spawn(async move {
            for seq in 0..messages {
                let t = demo_telemetry(seq);
                let payload = t.encode_to_vec().into();
                client
                    .publish(&topic, QoS::AtLeastOnce, false, payload, None)
                    .await?;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            anyhow::Ok(())
        })
    };
    let mut received = 0;
    let mut device_poll = Box::pin(poll_until_command(&mut device_events));
    while received < messages {
        tokio::select! {
            ev = server_events.next() => match ev {
                Ok(Event::Message(p)) => {
                    let t = Telemetry::decode(p.payload.as_ref())
                        .with_context(|| format!("decoding telemetry on {}", p.topic))?;
                    received += 1;
                    let device = mqtt::device_of_topic(&p.topic).unwrap_or(&t.device_id);
                    say.line(
                        &format!(
                            "server  <- {}  {}\n",
                            Escaped(&p.topic),
                            HumanLine { device, telemetry: &t }
                        ),
                        serde_json::json!({
                            "telemetry": { "topic": p.topic, "device_id": device, "seq": t.seq, "temperature_c": t.temperature_c,
                                           "humidity_pct": t.humidity_pct, "battery_v": t.battery_v },
                        }),
                    )?;
                }
                Ok(_) => {}
                Err(e) => bail!("server connection: {e}"),
            },
            cmd = &mut device_poll => {
                // Device traffic (PUBACKs) is polled here; a command this early is unexpected.
                let _ = cmd?;
            }
        }
    }
    device_task.await.context("device task")??;

    // The server sends a command; the device prints what it decodes.
    let command = Command {
        id: uuid::Uuid::new_v4().to_string(),
        device_id: DEFAULT_DEVICE.into(),
        name: "set_interval".into(),
        params: [("seconds".to_string(), "10".to_string())].into(),
        time_unix_nano: now_ns(),
    };
    let payload = command.encode_to_vec().into();
    server_client
        .publish(&commands, QoS::AtLeastOnce, false, payload, None)
        .await?;
    say.line(
        &format!("server  -> {commands}  {} {{seconds: 10}}\n", command.name),
        serde_json::json!({ "sent_command": { "topic": commands, "name": command.name, "id": command.id } }),
    )?;
    let got = tokio::select! {
        got = &mut device_poll => got?,
        _ = async { loop { if server_events.next().await.is_err() { break; } } } => bail!("server connection lost"),
    };
    if got.id != command.id {
        bail!("the device received a different command ({})", got.id);
    }
    say.line(
        &format!(
            "{DEFAULT_DEVICE} <- {commands}  {} {:?} (id {})\n",
            Escaped(&got.name),
            got.params,
            Escaped(&got.id)
        ),
        serde_json::json!({ "received_command": { "topic": commands, "name": got.name, "params": got.params, "id": got.id } }),
    )?;
    drop(device_poll);
    server_events
        .disconnect(&server_client, Duration::from_secs(2))
        .await;
    device_events
        .disconnect(&device_client, Duration::from_secs(2))
        .await;
    Ok(DemoResult {
        telemetry: received,
    })
}

async fn poll_until_command(events: &mut Poller) -> Result<Command> {
    loop {
        match events.next().await {
            Ok(Event::Message(p)) => {
                return Command::decode(p.payload.as_ref())
                    .with_context(|| format!("decoding the command on {}", p.topic));
            }
            Ok(_) => {}
            Err(e) => bail!("device connection: {e}"),
        }
    }
}

fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default()
}

fn demo_telemetry(seq: u64) -> Telemetry {
    let phase = seq as f64 / 3.0;
    Telemetry {
        device_id: DEFAULT_DEVICE.into(),
        seq,
        time_unix_nano: now_ns(),
        temperature_c: 21.5 + phase.sin(),
        humidity_pct: 45.0 + 5.0 * phase.cos(),
        pressure_hpa: 1013.2,
        battery_v: 3.7 - seq as f64 * 0.001,
        rssi_dbm: -60,
        status: crate::proto::v1::telemetry::Status::Ok as i32,
    }
}

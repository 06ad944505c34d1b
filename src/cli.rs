//! The top-level command line. Each family's arguments live beside its code.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "mqttkit", version, about = "Certificates, a Mosquitto broker, AWS IoT things and protobuf MQTT flows", long_about = None)]
pub struct Cli {
    /// More log output on stderr (-v info, -vv debug). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// From nothing to a verified round trip: certificates, a broker, telemetry and a command.
    Quickstart(crate::quickstart::QuickstartArgs),
    /// Certificates: a private CA, the broker's and the clients'.
    Pki(crate::pki::PkiArgs),
    /// A Mosquitto broker with mutual TLS and per-device ACLs: up, status, down, logs, users.
    Broker(crate::broker::BrokerArgs),
    /// Publish protobuf telemetry (as a device) or commands (as the server).
    Pub(crate::flows::PubArgs),
    /// Receive and decode telemetry (as the server) or commands (as a device).
    Sub(crate::flows::SubArgs),
    /// Telemetry stores filled by `sub telemetry --sink`: stats of what arrived.
    Sink(crate::sink::SinkArgs),
    /// AWS IoT Core things: create (certificate, least-privilege policy, profile), delete, list.
    Iot(crate::iot::IotArgs),
    /// Load test: simulated devices (own mTLS identities) and subscribers; rates, loss, latency, memory.
    Bench(crate::bench::BenchArgs),
    /// Check a connection step by step and name the fix for the first failure.
    Doctor(crate::doctor::DoctorArgs),
}

pub fn init_tracing(verbose: u8) {
    let default = match verbose {
        // The platform verifier logs a rejected certificate at ERROR; the
        // command's own one-line error already says it.
        0 => "warn,rustls_platform_verifier=off",
        1 => "mqttkit=info,warn",
        _ => "mqttkit=debug,info",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

/// Runs one command. Async so networked commands share one runtime.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Pki(args) => crate::pki::run(args).map(|()| ExitCode::SUCCESS),
        Command::Broker(args) => crate::broker::run(args).await,
        Command::Doctor(args) => crate::doctor::run(args).await,
        Command::Quickstart(args) => crate::quickstart::run(args).await,
        Command::Iot(args) => crate::iot::run(args).await.map(|()| ExitCode::SUCCESS),
        Command::Sink(args) => crate::sink::run(args).await,
        Command::Pub(args) => crate::flows::run_pub(args).await,
        Command::Sub(args) => crate::flows::run_sub(args).await,
        Command::Bench(args) => crate::bench::run(args).await,
    }
}

//! The top-level command line. Each family's arguments live beside its code.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "mqttkit", version, about = "Certificates, a Mosquitto broker, AWS IoT things and protobuf MQTT flows", long_about = None)]
pub struct Cli {
    /// More log output on stderr (once info, twice debug). RUST_LOG overrides.
    #[arg(long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// --verbose, before the subcommand (-v, -vv): after `sub` -v prints
    /// the topic, as for mosquitto_sub.
    #[arg(short = 'v', action = clap::ArgAction::Count)]
    pub v: u8,
    /// Output root holding certs/, profiles/, mosquitto/ and things/ (before or after the subcommand).
    #[arg(
        long,
        value_name = "DIR",
        default_value = "out",
        env = "MQTTKIT_OUT",
        global = true
    )]
    pub out: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once per process: the size of a variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// From nothing to a verified round trip: certificates, a broker, telemetry and a command.
    Quickstart(crate::quickstart::QuickstartArgs),
    /// Certificates: a private CA, the broker's and the clients'.
    Pki(crate::pki::PkiArgs),
    /// A Mosquitto broker with mutual TLS and per-device ACLs: up, status, down, logs, users.
    Broker(crate::broker::BrokerArgs),
    /// Publish raw payloads (`-t TOPIC -m|-l|-f|-n`, mosquitto_pub's flags), protobuf telemetry (as a device) or commands (as the server).
    Pub(crate::flows::PubArgs),
    /// Print raw payloads (`-t FILTER`, mosquitto_sub's flags), or receive and decode telemetry (as the server) or commands (as a device).
    Sub(crate::flows::SubArgs),
    /// Telemetry stores filled by `sub telemetry --sink`: stats of what arrived.
    Sink(crate::sink::SinkArgs),
    /// AWS IoT Core things: create (certificate, least-privilege policy, profile), delete, list.
    Iot(crate::iot::IotArgs),
    /// Load test: simulated devices (own mTLS identities) and subscribers; rates, loss, latency, memory.
    Bench(crate::bench::BenchArgs),
    /// Check a connection step by step and name the fix for the first failure.
    Doctor(crate::doctor::DoctorArgs),
    /// Print a shell completion script: `mqttkit completions bash > /etc/bash_completion.d/mqttkit`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff): `mqttkit man | man -l -`.
    Man,
}

impl Cli {
    /// `-v` and `--verbose` together.
    pub fn verbosity(&self) -> u8 {
        self.verbose.saturating_add(self.v)
    }
}

pub fn init_tracing(verbose: u8) {
    let default = match verbose {
        // The platform verifier logs a rejected certificate at ERROR, and
        // rumqttc an MQTT 5 failure reason (PUBACK 0x87...) at WARN; the
        // command's own one-line error and summary already say them.
        0 => "warn,rustls_platform_verifier=off,rumqttc=error",
        1 => "mqttkit=info,warn,rumqttc=error",
        _ => "mqttkit=debug,info",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour_on_stderr())
        .with_target(false)
        .try_init();
}

/// Colour only for a person at a terminal, and never with NO_COLOR set to
/// anything non-empty (https://no-color.org).
fn colour_on_stderr() -> bool {
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    !no_color && std::io::stderr().is_terminal()
}

/// Writes the completion script for `shell` or the man page to stdout.
fn print_completions(shell: clap_complete::Shell) -> anyhow::Result<ExitCode> {
    let mut cmd = Cli::command();
    let mut out = std::io::stdout().lock();
    clap_complete::generate(shell, &mut cmd, "mqttkit", &mut out);
    std::io::Write::flush(&mut out)?;
    Ok(ExitCode::SUCCESS)
}

fn print_man() -> anyhow::Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    clap_mangen::Man::new(Cli::command()).render(&mut out)?;
    std::io::Write::flush(&mut out)?;
    Ok(ExitCode::SUCCESS)
}

/// Runs one command. Async so networked commands share one runtime.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Pki(crate::pki::PkiArgs {
            command: crate::pki::PkiCommand::Init(a),
        }) => {
            let cfg = a.config()?;
            crate::pki::init(&cfg)?;
            // The `local` profile points at the new certificates; `broker up`
            // fills in the real port.
            crate::mqtt::profile::ensure_local(&cfg.out)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Pki(crate::pki::PkiArgs {
            command: crate::pki::PkiCommand::Revoke(a),
        }) => {
            crate::pki::revoke::run(&a)?;
            crate::broker::enforce_revocation(&a.out.out, &a.name).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Pki(args) => crate::pki::run(args),
        Command::Broker(args) => crate::broker::run(args).await,
        Command::Doctor(args) => crate::doctor::run(args).await,
        Command::Quickstart(args) => crate::quickstart::run(args).await,
        Command::Iot(args) => crate::iot::run(args).await.map(|()| ExitCode::SUCCESS),
        Command::Sink(args) => crate::sink::run(args).await,
        Command::Pub(args) => crate::flows::run_pub(args).await,
        Command::Sub(args) => crate::flows::run_sub(args).await,
        Command::Bench(args) => crate::bench::run(args).await,
        Command::Completions { shell } => print_completions(shell),
        Command::Man => print_man(),
    }
}

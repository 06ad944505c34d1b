//! `mqttkit doctor`: checks a connection step by step (configuration, name
//! resolution, TCP, TLS, certificates, MQTT CONNECT, topic permissions) and
//! names the fix at the first failing step.

mod schema;

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Args;
use rumqttc::QoS;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use serde::Serialize;
use tokio::net::TcpStream;
use x509_parser::prelude::*;

use crate::mqtt::failure::Failure;
use crate::mqtt::poller::Poller;
use crate::mqtt::{
    self, session, ConnectSpec, ConnectionArgs, Endpoint, Event, Options, Protocol, Reason, Role,
    Transport,
};
use crate::output;

#[derive(Debug, Args)]
pub struct DoctorArgs {
    #[command(flatten)]
    pub conn: ConnectionArgs,
    /// The device identity to check (default: the profile's device).
    #[arg(long)]
    pub device_id: Option<String>,
    /// Check the server identity (wildcard telemetry, commands out) instead of a device.
    #[arg(long, conflicts_with = "device_id")]
    pub server: bool,
    /// Time allowed for each network step: 5s, 500ms (a bare number is seconds).
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = crate::units::parse_positive_duration)]
    pub timeout: Duration,
    /// Print the verdict and every step as one JSON object on stdout: {"ok", "steps": [...]}.
    #[arg(long)]
    pub json: bool,
    /// Check the topics of this map (telemetry written, commands read)
    /// instead of devices/ID/telemetry and devices/ID/commands.
    #[command(flatten)]
    pub schema: crate::schema::SchemaArgs,
    /// A sample value for a {label} of the mapped topics (repeatable; default "doctor").
    #[arg(long = "label", value_name = "NAME=VALUE", value_parser = crate::schema::args::parse_label)]
    pub labels: Vec<(String, String)>,
}

#[derive(Debug, Serialize, Clone)]
pub struct Step {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

struct Report {
    steps: Vec<Step>,
    json: bool,
}

impl Report {
    fn pass(&mut self, name: &'static str, detail: impl Into<String>) {
        self.push(Step {
            name,
            ok: true,
            detail: detail.into(),
            fix: None,
        });
    }

    fn fail(&mut self, name: &'static str, detail: impl Into<String>, fix: impl Into<String>) {
        self.push(Step {
            name,
            ok: false,
            detail: detail.into(),
            fix: Some(fix.into()),
        });
    }

    fn push(&mut self, step: Step) {
        if !self.json {
            let mark = if step.ok { " ok " } else { "FAIL" };
            let mut line = format!("[{mark}] {:<22} {}\n", step.name, step.detail);
            if let Some(fix) = step.fix.as_ref().filter(|f| !f.is_empty()) {
                line.push_str(&format!("       fix: {fix}\n"));
            }
            let _ = output::print_stdout(&line);
        }
        self.steps.push(step);
    }

    fn finish(self) -> Result<ExitCode> {
        let healthy = self.steps.iter().all(|s| s.ok);
        if self.json {
            output::print_json(&serde_json::json!({ "ok": healthy, "steps": self.steps }))?;
        } else if healthy {
            output::print_stdout("all checks passed\n")?;
        }
        Ok(if healthy {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        })
    }
}

pub async fn run(args: DoctorArgs) -> Result<ExitCode> {
    let mut report = Report {
        steps: Vec::new(),
        json: args.json,
    };
    let timeout = args.timeout;
    let device = match (&args.device_id, args.server) {
        (Some(d), _) => Some(d.clone()),
        (None, true) => None,
        (None, false) => (args.conn.spec().ok()).and_then(|s| s.default_device().ok().flatten()),
    };
    // A bad map is an error before anything connects.
    let probes = schema::plan(&args, device.as_deref())?;
    check_crl(&mut report, &args.conn.out);
    // Each check records its step; the first that fails ends the run.
    let Some(endpoint) = check_configuration(&mut report, &args, device.as_deref()) else {
        return report.finish();
    };
    if let Some((cert, _)) = &endpoint.identity {
        if !check_client_cert(&mut report, cert, endpoint.cafile.as_deref()) {
            return report.finish();
        }
    }
    let Some(addrs) = check_resolution(&mut report, &endpoint).await else {
        return report.finish();
    };
    let Some(tcp) = check_tcp(&mut report, &endpoint, &addrs, timeout).await else {
        return report.finish();
    };
    // The TLS handshake, verifying the broker by the CA and the host name.
    if !matches!(endpoint.transport, Transport::Wss | Transport::Tcp)
        && !check_tls(&mut report, &endpoint, tcp, timeout).await
    {
        return report.finish();
    }
    let client_id = endpoint
        .client_id
        .clone()
        .or_else(|| device.clone())
        .unwrap_or_else(|| mqtt::unique_client_id("mqttkit-doctor"));
    if !check_connect(&mut report, &endpoint, &client_id, timeout).await {
        return report.finish();
    }
    // The spec was built once already (by check_configuration): this cannot fail.
    if let Ok(spec) = args.conn.spec() {
        let device = device.as_deref();
        match &probes {
            Some(p) => {
                schema::check(
                    &mut report,
                    &spec,
                    &endpoint,
                    device,
                    p,
                    &client_id,
                    timeout,
                )
                .await
            }
            None => {
                check_permissions(&mut report, &spec, &endpoint, device, &client_id, timeout).await
            }
        }
    }
    report.finish()
}

/// A CRL of this out dir near its nextUpdate is re-signed here too, so it
/// never silently expires (doctor does not signal the broker: `broker
/// status` or `broker up` has a running one re-read it).
fn check_crl(report: &mut Report, out: &Path) {
    let certs = crate::identity::certs_dir(out);
    if certs.join("crl.pem").exists() && crate::pki::revoke::refresh_crl_if_due(&certs) {
        report.pass(
            "crl",
            format!(
                "re-signed {} before its nextUpdate; run `mqttkit broker status` so a running broker re-reads it",
                certs.join("crl.pem").display()
            ),
        );
    }
}

/// The connection settings of the identity under test: the device's, or the server's.
fn endpoint_for(args: &DoctorArgs, device: Option<&str>) -> Result<Endpoint> {
    let role = match device {
        Some(d) => Role::Device(d),
        None => Role::Server,
    };
    args.conn.spec()?.resolve(role)
}

/// Configuration: files exist, parse, and the key matches the certificate.
fn check_configuration(
    report: &mut Report,
    args: &DoctorArgs,
    device: Option<&str>,
) -> Option<Endpoint> {
    let endpoint = match endpoint_for(args, device) {
        Ok(e) => e,
        Err(e) => {
            // The error already names the file or flag and the fix.
            report.fail("configuration", format!("{e:#}"), "");
            return None;
        }
    };
    let who = match &endpoint.identity {
        Some((cert, _)) => format!("identity {}", cert.display()),
        None => "no client certificate".to_string(),
    };
    report.pass(
        "configuration",
        format!(
            "{} as {who}, {}",
            endpoint.describe(),
            match endpoint.transport {
                Transport::Tcp => "no TLS (plain TCP, not encrypted)".to_string(),
                _ => format!("CA {}", mqtt::describe_roots(endpoint.cafile.as_deref())),
            }
        ),
    );
    Some(endpoint)
}

async fn check_resolution(report: &mut Report, endpoint: &Endpoint) -> Option<Vec<SocketAddr>> {
    let addrs: Vec<SocketAddr> =
        match tokio::net::lookup_host((endpoint.host.as_str(), endpoint.port)).await {
            Ok(a) => a.collect(),
            Err(e) => {
                report.fail(
                    "name resolution",
                    format!("'{}' does not resolve: {e}", endpoint.host),
                    "check --host (or the profile's host) and DNS",
                );
                return None;
            }
        };
    let shown: Vec<String> = addrs.iter().map(|a| a.ip().to_string()).collect();
    report.pass(
        "name resolution",
        format!("{} -> {}", endpoint.host, shown.join(", ")),
    );
    Some(addrs)
}

async fn check_tcp(
    report: &mut Report,
    endpoint: &Endpoint,
    addrs: &[SocketAddr],
    timeout: Duration,
) -> Option<TcpStream> {
    let start = Instant::now();
    let (host, port) = (&endpoint.host, endpoint.port);
    let (detail, fix) = match tokio::time::timeout(timeout, TcpStream::connect(addrs)).await {
        Ok(Ok(tcp)) => {
            report.pass(
                "TCP connect",
                format!(
                    "{} in {:.1} ms",
                    tcp.peer_addr().map(|a| a.to_string()).unwrap_or_default(),
                    start.elapsed().as_secs_f64() * 1000.0
                ),
            );
            return Some(tcp);
        }
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => (
            format!("nothing is listening on {host}:{port} (connection refused)"),
            "start the broker (`mqttkit broker up`) or check --port",
        ),
        Ok(Err(e)) => (
            format!("{host}:{port}: {e}"),
            "check --host/--port, routes and firewalls",
        ),
        Err(_) => (
            format!("no answer from {host}:{port} within {timeout:?}"),
            "a firewall may drop the traffic; check --host/--port (AWS IoT: try --transport alpn on 443)",
        ),
    };
    report.fail("TCP connect", detail, fix);
    None
}

/// MQTT CONNECT/CONNACK: the broker's verdict on our client certificate.
async fn check_connect(
    report: &mut Report,
    endpoint: &Endpoint,
    client_id: &str,
    timeout: Duration,
) -> bool {
    match mqtt::probe::connect_once(endpoint, &client_id_for(endpoint, client_id), timeout).await {
        Ok(d) => {
            report.pass(
                "MQTT CONNECT",
                format!("CONNACK accepted in {:.1} ms", d.as_secs_f64() * 1000.0),
            );
            true
        }
        Err(e) => {
            // The explanation already carries the fix; the report shows it apart.
            let problem = match e.failure {
                Failure::TimedOut => e.explanation,
                ref f => f.problem(&endpoint.host, endpoint.cafile.as_deref()),
            };
            report.fail("MQTT CONNECT", problem, e.failure.fix(&endpoint.host));
            false
        }
    }
}

/// Local checks of the client certificate: dates and chain to --cafile.
fn check_client_cert(report: &mut Report, cert: &Path, cafile: Option<&Path>) -> bool {
    let Ok(info) = crate::pki::inspect::inspect_file(
        cert,
        cafile
            .and_then(|c| std::fs::read(c).ok())
            .and_then(|d| parse_x509_pem(&d).ok().map(|(_, p)| p.contents))
            .as_deref(),
    ) else {
        return true; // already validated by rustls when loading
    };
    if info.days_left < 0 {
        report.fail(
            "client certificate",
            format!("{} expired on {}", cert.display(), info.not_after),
            "issue a new one with `mqttkit pki issue NAME --force`",
        );
        return false;
    }
    let chain = if info.chains_to_ca {
        "signed by --cafile's CA".to_string()
    } else {
        "NOT signed by --cafile's CA (the broker may still trust its issuer)".to_string()
    };
    report.pass(
        "client certificate",
        format!(
            "CN {} valid until {} ({} days), key matches, {chain}",
            info.common_name.as_deref().unwrap_or("?"),
            info.not_after,
            info.days_left
        ),
    );
    true
}

async fn check_tls(
    report: &mut Report,
    endpoint: &Endpoint,
    tcp: TcpStream,
    timeout: Duration,
) -> bool {
    let Ok(server_name) = ServerName::try_from(endpoint.host.clone()) else {
        report.fail(
            "TLS handshake",
            format!("'{}' is not a valid TLS server name", endpoint.host),
            "use a DNS name or IP address for --host",
        );
        return false;
    };
    let connector = tokio_rustls::TlsConnector::from(endpoint.tls.clone());
    let result = tokio::time::timeout(timeout, connector.connect(server_name.clone(), tcp)).await;
    match result {
        Ok(Ok(stream)) => {
            let (_, conn) = stream.get_ref();
            let detail = match conn.peer_certificates().and_then(|c| c.first()) {
                Some(leaf) => describe_leaf(leaf),
                None => String::new(),
            };
            report.pass(
                "TLS handshake",
                format!(
                    "{:?}, broker certificate verified for '{}'{detail}",
                    conn.protocol_version()
                        .unwrap_or(rustls::ProtocolVersion::TLSv1_3),
                    endpoint.host
                ),
            );
            true
        }
        Ok(Err(e)) => {
            let (detail, fix) = explain_tls_failure(endpoint, server_name, &e, timeout).await;
            report.fail("TLS handshake", detail, fix);
            false
        }
        Err(_) => {
            report.fail(
                "TLS handshake",
                format!("no TLS answer within {timeout:?}"),
                "check --port: the server accepted TCP but does not answer TLS",
            );
            false
        }
    }
}

/// What a failed handshake means and its fix, naming what the broker's
/// certificate does carry.
async fn explain_tls_failure(
    endpoint: &Endpoint,
    server_name: ServerName<'static>,
    e: &std::io::Error,
    timeout: Duration,
) -> (String, String) {
    // Fetch the certificate without verifying it, to say what it does carry.
    let leaf = fetch_leaf(endpoint, server_name, timeout).await;
    let names = leaf.as_ref().map(|l| sans_of(l)).unwrap_or_default();
    let failure = Failure::from_error(e)
        .refine(&endpoint.host, endpoint.port)
        .await
        .with_carried_names(names);
    let mut detail = failure.problem(&endpoint.host, endpoint.cafile.as_deref());
    if let (
        Failure::ServerCertExpired | Failure::ServerCertNotYetValid | Failure::UnknownIssuer,
        Some(l),
    ) = (&failure, &leaf)
    {
        detail.push_str(&describe_leaf(l));
    }
    let fix = failure.fix(&endpoint.host);
    (detail, fix)
}

fn describe_leaf(der: &CertificateDer<'_>) -> String {
    match parse_x509_certificate(der) {
        Ok((_, c)) => format!(
            " (valid {} to {})",
            c.validity().not_before.to_datetime().date(),
            c.validity().not_after.to_datetime().date()
        ),
        Err(_) => String::new(),
    }
}

fn sans_of(der: &CertificateDer<'_>) -> Vec<String> {
    let Ok((_, c)) = parse_x509_certificate(der) else {
        return Vec::new();
    };
    let mut names = Vec::new();
    if let Ok(Some(ext)) = c.subject_alternative_name() {
        for n in &ext.value.general_names {
            match n {
                GeneralName::DNSName(d) => names.push(d.to_string()),
                GeneralName::IPAddress(b) if b.len() == 4 => names.push(
                    std::net::Ipv4Addr::from(<[u8; 4]>::try_from(*b).expect("4")).to_string(),
                ),
                GeneralName::IPAddress(b) if b.len() == 16 => names.push(
                    std::net::Ipv6Addr::from(<[u8; 16]>::try_from(*b).expect("16")).to_string(),
                ),
                _ => {}
            }
        }
    }
    names
}

/// Records the server's certificate and accepts it: for diagnostics only, never for data.
#[derive(Debug)]
struct CaptureLeaf {
    leaf: Mutex<Option<CertificateDer<'static>>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for CaptureLeaf {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        *self.leaf.lock().expect("lock") = Some(end_entity.clone().into_owned());
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

async fn fetch_leaf(
    endpoint: &Endpoint,
    server_name: ServerName<'static>,
    timeout: Duration,
) -> Option<CertificateDer<'static>> {
    let provider = mqtt::tls::provider();
    let capture = Arc::new(CaptureLeaf {
        leaf: Mutex::new(None),
        provider: provider.clone(),
    });
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .ok()?
        .dangerous()
        .with_custom_certificate_verifier(capture.clone())
        .with_no_client_auth();
    let tcp = tokio::time::timeout(
        timeout,
        TcpStream::connect((endpoint.host.as_str(), endpoint.port)),
    )
    .await
    .ok()?
    .ok()?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let _ = tokio::time::timeout(timeout, connector.connect(server_name, tcp)).await;
    let leaf = capture.leaf.lock().ok()?.take();
    leaf
}

/// The client id to connect with: the profile's fixed one (AWS IoT policies
/// allow only that), else a unique one.
fn client_id_for(endpoint: &Endpoint, prefix: &str) -> String {
    endpoint
        .client_id
        .clone()
        .unwrap_or_else(|| mqtt::client_id::unique_within(endpoint, prefix))
}

/// Proves the identity may read its inbound topics and write its outbound
/// ones. MQTT 3.1.1 brokers acknowledge denied publishes and (mosquitto 2.0)
/// grant denied subscriptions, then drop the messages: only a message that
/// arrives proves a permission, so a peer identity from the profile sends and
/// receives when there is one.
async fn check_permissions(
    report: &mut Report,
    conn: &ConnectSpec,
    endpoint: &Endpoint,
    device: Option<&str>,
    client_id: &str,
    timeout: Duration,
) {
    let peer_device = peer_device(conn);
    let (filter, inbound, outbound, peer_role) = topics(device, &peer_device);
    let Some(peer) = peer_endpoint(conn, endpoint, peer_role) else {
        acknowledged_only(report, endpoint, &filter, &outbound, client_id, timeout).await;
        return;
    };
    match round_trip(&peer, endpoint, &filter, &inbound, client_id, timeout).await {
        Ok(ms) => report.pass(
            "subscribe permission",
            format!("'{filter}': a message from the peer identity arrived in {ms:.1} ms"),
        ),
        Err(why) => {
            report.fail(
                "subscribe permission",
                format!("a message to '{inbound}' did not reach this identity's subscription to '{filter}' ({why})"),
                "the identity's ACL/policy does not allow reading it: check the certificate CN (`mqttkit pki list`) and the broker's ACL",
            );
            return;
        }
    }
    match round_trip(endpoint, &peer, &outbound, &outbound, client_id, timeout).await {
        Ok(ms) => report.pass(
            "publish permission",
            format!("'{outbound}' delivered to the peer identity in {ms:.1} ms"),
        ),
        Err(why) => report.fail(
            "publish permission",
            format!("a message to '{outbound}' did not arrive ({why})"),
            "the identity's ACL/policy does not allow publishing there: check the certificate CN and the broker's ACL",
        ),
    }
}

/// The device on the other end of the server's checks: the profile's.
fn peer_device(conn: &ConnectSpec) -> String {
    (conn.default_device().ok().flatten()).unwrap_or_else(|| crate::pki::DEFAULT_DEVICE.to_string())
}

/// The peer identity in `peer_role`, from the profile, not from --cert/--key
/// (those are the identity under test); `None` when there is none.
fn peer_endpoint(conn: &ConnectSpec, endpoint: &Endpoint, peer_role: Role<'_>) -> Option<Endpoint> {
    let profile_only = ConnectSpec {
        identity: None,
        client_id: None,
        ..conn.clone()
    };
    profile_only.resolve(peer_role).ok().filter(|p| {
        p.identity != endpoint.identity && p.identity.as_ref().is_some_and(|(c, _)| c.exists())
    })
}

/// (the filter the identity subscribes to, a topic in it, the topic it
/// publishes to, the peer's role): a device reads its commands and writes its
/// telemetry; the server reads all telemetry and writes `peer_device`'s commands.
fn topics<'a>(device: Option<&str>, peer_device: &'a str) -> (String, String, String, Role<'a>) {
    match device {
        Some(d) => (
            mqtt::command_topic(d),
            mqtt::command_topic(d),
            mqtt::telemetry_topic(d),
            Role::Server,
        ),
        None => (
            mqtt::ALL_TELEMETRY.to_string(),
            mqtt::telemetry_topic(peer_device),
            mqtt::command_topic(peer_device),
            Role::Device(peer_device),
        ),
    }
}

/// Without a peer identity: SUBACK and PUBACK are all the broker tells.
async fn acknowledged_only(
    report: &mut Report,
    endpoint: &Endpoint,
    filter: &str,
    outbound: &str,
    client_id: &str,
    timeout: Duration,
) {
    let (suback, puback, protocol) =
        subscribe_and_publish(endpoint, filter, outbound, client_id, timeout).await;
    match suback {
        Some(Ok(q)) => report.pass(
            "subscribe permission",
            format!(
                "'{filter}' granted at {q:?} (delivery not verifiable without a peer identity)"
            ),
        ),
        refused => {
            let why = match refused {
                Some(Err(r)) => format!("the broker refused SUBSCRIBE to '{filter}' ({r})"),
                _ => format!("no SUBACK for '{filter}' within {timeout:?}"),
            };
            report.fail(
                "subscribe permission",
                why,
                "the identity's ACL/policy does not allow it",
            );
            return;
        }
    }
    match puback {
        // MQTT 5: mosquitto answers 0x87 for what its ACL denies, so a
        // success is an answer (3.1.1 acknowledges denied messages too).
        Some(r) if r.is_success() && protocol == Protocol::V5 => report.pass(
            "publish permission",
            format!("'{outbound}' accepted (PUBACK {r})"),
        ),
        Some(r) if r.is_success() => report.pass(
            "publish permission",
            format!("'{outbound}' acknowledged (MQTT 3.1.1: delivery not verifiable without a peer identity)"),
        ),
        Some(r) => report.fail(
            "publish permission",
            format!("the broker refused the publish to '{outbound}' ({r})"),
            "the identity's ACL/policy does not allow publishing there: check the certificate CN and the broker's ACL",
        ),
        None => report.fail(
            "publish permission",
            format!("no PUBACK for '{outbound}' within {timeout:?}"),
            "the identity's ACL/policy may not allow it; see the broker log",
        ),
    }
}

/// Subscribes to `filter` and publishes to `outbound` at QoS 1; returns the
/// SUBACK's first code, the PUBACK's reason (if they came within `timeout`)
/// and the protocol the connection spoke.
async fn subscribe_and_publish(
    endpoint: &Endpoint,
    filter: &str,
    outbound: &str,
    client_id: &str,
    timeout: Duration,
) -> (Option<Result<QoS, Reason>>, Option<Reason>, Protocol) {
    let opts = Options::new(&client_id_for(endpoint, client_id));
    let (client, mut events) = session::open(endpoint, &opts);
    let _ = client
        .subscribe(&[(filter.to_string(), QoS::AtLeastOnce)])
        .await;
    let payload = bytes::Bytes::from_static(b"mqttkit doctor");
    let _ = (client.publish(outbound, QoS::AtLeastOnce, false, payload, None)).await;
    let (mut suback, mut puback) = (None, None);
    let _ = tokio::time::timeout(timeout, async {
        while suback.is_none() || puback.is_none() {
            match events.poll().await {
                Ok(Event::SubAck { codes, .. }) => suback = codes.into_iter().next(),
                Ok(Event::PubAck(ack)) => puback = Some(ack.reason),
                Ok(_) => {}
                Err(_) => break,
            }
        }
    })
    .await;
    let _ = client.try_disconnect();
    (suback, puback, client.protocol())
}

/// `receiver` subscribes to `filter`; `sender` publishes a unique payload to
/// `topic`; returns the milliseconds until it arrived.
async fn round_trip(
    sender: &Endpoint,
    receiver: &Endpoint,
    filter: &str,
    topic: &str,
    client_id: &str,
    timeout: Duration,
) -> Result<f64, String> {
    let opts = Options::new(&client_id_for(receiver, client_id));
    let (rx, mut rx_events) = session::open(receiver, &opts);
    rx.subscribe(&[(filter.to_string(), QoS::AtLeastOnce)])
        .await
        .map_err(|e| e.to_string())?;
    wait_for_suback(&mut rx_events, filter, timeout).await?;
    let payload = format!("mqttkit-doctor {:016x}", rand::random::<u64>());
    let opts = Options::new(&client_id_for(sender, "mqttkit-doctor-peer"));
    let (tx, tx_events) = session::open(sender, &opts);
    let start = Instant::now();
    tx.publish(topic, QoS::AtLeastOnce, false, payload.clone().into(), None)
        .await
        .map_err(|e| e.to_string())?;
    // The sender's PUBACK: over MQTT 5 a refusal says why nothing arrives.
    let (refusal_tx, mut refusal) = tokio::sync::oneshot::channel();
    let sender_task = tokio::spawn(sender_acks(Poller::new(tx_events), refusal_tx));
    let got = arrived(&mut rx_events, payload.as_bytes(), timeout).await;
    let _ = tx.try_disconnect();
    let _ = rx.try_disconnect();
    // Let both DISCONNECTs go out so the broker logs clean closes.
    let _ = tokio::time::timeout(Duration::from_millis(100), rx_events.poll()).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    sender_task.abort();
    match (got, refusal.try_recv()) {
        (true, _) => Ok(start.elapsed().as_secs_f64() * 1000.0),
        (false, Ok(reason)) => Err(format!("the broker refused the publish: {reason}")),
        (false, Err(_)) => Err(format!("nothing within {timeout:?}")),
    }
}

/// Polls the sender's connection; reports a PUBACK with a failure reason.
async fn sender_acks(mut events: Poller, refusal: tokio::sync::oneshot::Sender<Reason>) {
    loop {
        match events.next().await {
            Ok(Event::PubAck(ack)) if !ack.reason.is_success() => {
                let _ = refusal.send(ack.reason);
                // Keep the connection polled until the task is stopped.
                while events.next().await.is_ok() {}
                return;
            }
            Ok(_) => {}
            Err(_) => return,
        }
    }
}

async fn wait_for_suback(
    events: &mut mqtt::EventLoop,
    filter: &str,
    timeout: Duration,
) -> Result<(), String> {
    tokio::time::timeout(timeout, async {
        loop {
            match events.poll().await {
                Ok(Event::SubAck { codes, .. }) => {
                    return match codes.into_iter().next() {
                        Some(Err(r)) => {
                            Err(format!("the broker refused SUBSCRIBE to '{filter}' ({r})"))
                        }
                        _ => Ok(()),
                    }
                }
                Ok(_) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
    })
    .await
    .map_err(|_| "no SUBACK".to_string())?
}

/// Whether a message with exactly `payload` arrives within `timeout`.
async fn arrived(events: &mut mqtt::EventLoop, payload: &[u8], timeout: Duration) -> bool {
    tokio::time::timeout(timeout, async {
        loop {
            match events.poll().await {
                Ok(Event::Message(p)) if p.payload.as_ref() == payload => return true,
                Ok(_) => {}
                Err(_) => return false,
            }
        }
    })
    .await
    .unwrap_or(false)
}

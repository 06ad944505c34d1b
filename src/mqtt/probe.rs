//! One MQTT CONNECT/CONNACK round trip, and plain-words explanations of why
//! a connection failed. Used by `broker up`/`status` health checks and `doctor`.

use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, ConnectionError, Event, Packet};

use super::Endpoint;

#[derive(Debug, thiserror::Error)]
#[error("{explanation}")]
pub struct ProbeError {
    pub explanation: String,
    /// The broker answered at the TCP level (so it is up, just refusing us).
    pub reached: bool,
}

/// Connects, waits for CONNACK, disconnects. Returns the time to CONNACK.
pub async fn connect_once(
    endpoint: &Endpoint,
    client_id: &str,
    timeout: Duration,
) -> Result<Duration, ProbeError> {
    let start = Instant::now();
    let opts = endpoint.mqtt_options(client_id);
    let (client, mut eventloop) = AsyncClient::new(opts, 10);
    let result = tokio::time::timeout(timeout, async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => return Ok(start.elapsed()),
                Ok(_) => {}
                Err(e) => return Err(e),
            }
        }
    })
    .await;
    let out = match result {
        Ok(Ok(d)) => Ok(d),
        Ok(Err(e)) => Err(ProbeError {
            reached: reached(&e),
            explanation: explain(&e, endpoint),
        }),
        Err(_) => Err(ProbeError {
            reached: false,
            explanation: format!(
                "no CONNACK from {} within {:.0?}",
                endpoint.describe(),
                timeout
            ),
        }),
    };
    if out.is_ok() {
        let _ = client.try_disconnect();
        // Let the DISCONNECT go out so the broker does not log a lost connection.
        let _ = tokio::time::timeout(Duration::from_millis(200), eventloop.poll()).await;
    }
    out
}

fn reached(e: &ConnectionError) -> bool {
    match e {
        ConnectionError::Io(io) => !matches!(
            io.kind(),
            std::io::ErrorKind::ConnectionRefused
                | std::io::ErrorKind::TimedOut
                | std::io::ErrorKind::HostUnreachable
                | std::io::ErrorKind::NetworkUnreachable
                | std::io::ErrorKind::NotFound
        ),
        ConnectionError::NetworkTimeout => false,
        _ => true,
    }
}

/// Explains a connection failure in terms of what to fix.
pub fn explain(e: &ConnectionError, endpoint: &Endpoint) -> String {
    let at = endpoint.describe();
    let text = format!("{e}");
    let debug = format!("{e:?}");
    if let ConnectionError::ConnectionRefused(code) = e {
        return match code {
            rumqttc::ConnectReturnCode::NotAuthorized
            | rumqttc::ConnectReturnCode::BadUserNamePassword => format!(
                "{at}: the broker refused the MQTT CONNECT ({code:?}): the identity is not allowed; check the user name/password or the certificate's CN"
            ),
            _ => format!("{at}: the broker refused the MQTT CONNECT ({code:?})"),
        };
    }
    if debug.contains("ConnectionRefused") {
        return format!(
            "{at}: nothing is listening (connection refused); start the broker (`mqttkit broker up`) or check --host/--port"
        );
    }
    if debug.contains("NotValidForName") {
        return format!(
            "{at}: the broker's certificate is not valid for the name '{}'; reissue it with `mqttkit pki init --host {} --force` (or connect by a name it carries: `mqttkit pki list`)",
            endpoint.host, endpoint.host
        );
    }
    if debug.contains("UnknownIssuer") || debug.contains("BadSignature") {
        return format!(
            "{at}: the broker's certificate is not signed by --cafile {}; pass the CA that issued the broker certificate",
            endpoint.cafile.display()
        );
    }
    if debug.contains("Expired") {
        return format!(
            "{at}: the broker's certificate has expired; reissue it with `mqttkit pki init --force`"
        );
    }
    if debug.contains("CertificateRequired") {
        return format!(
            "{at}: the broker requires a client certificate and none was given; pass --cert/--key or --profile"
        );
    }
    if debug.contains("UnknownCA")
        || debug.contains("BadCertificate")
        || debug.contains("DecryptError")
        || debug.contains("CertificateUnknown")
        || debug.contains("HandshakeFailure")
    {
        return format!(
            "{at}: the broker rejected the client certificate (TLS alert {}); use a certificate signed by the broker's CA (`mqttkit pki issue NAME`)",
            alert_name(&debug)
        );
    }
    if matches!(e, ConnectionError::NetworkTimeout) {
        return format!("{at}: the connection timed out; check --host/--port and firewalls");
    }
    if debug.contains("UnexpectedEof")
        || debug.contains("ConnectionReset")
        || debug.contains("ConnectionAborted")
    {
        return format!(
            "{at}: the broker closed the connection during the handshake; the client certificate was probably rejected or missing (check the broker log)"
        );
    }
    format!("{at}: {text}")
}

fn alert_name(debug: &str) -> &'static str {
    for name in [
        "UnknownCA",
        "BadCertificate",
        "DecryptError",
        "CertificateUnknown",
        "HandshakeFailure",
    ] {
        if debug.contains(name) {
            return name;
        }
    }
    "unknown"
}

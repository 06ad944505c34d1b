//! Why a connection failed, as one typed kind, and the fix for each kind.
//!
//! rumqttc, tokio-rustls and tungstenite each wrap the root cause in their own
//! layers (a `rustls::Error` often sits inside an `io::Error`), so
//! [`Failure::classify`] walks those layers by type and variant. Every caller
//! (`probe`, `doctor`, `broker up`, `pub`/`sub`, `bench`) explains from the kind,
//! never from an error's formatted text, so a reworded message or a library
//! upgrade cannot silently change what mqttkit advises.

use std::error::Error as StdError;
use std::io;
use std::path::Path;
use std::time::Duration;

use rumqttc::{ConnectReturnCode, ConnectionError};

use super::reason::{self, Reason};
use super::session::ConnError;
use rustls::{AlertDescription, CertificateError};

/// One connection failure kind.
#[derive(Debug, Clone, PartialEq)]
pub enum Failure {
    /// TCP connection refused: no broker on that port.
    NothingListening,
    /// No answer in time (TCP connect or the MQTT network timeout).
    TimedOut,
    /// The host name does not resolve.
    NameNotResolved,
    /// No route to the host or its network.
    Unreachable,
    /// The broker's certificate does not carry the host name; `carried` lists
    /// the names it does carry when the caller looked (empty: unknown).
    NameMismatch {
        carried: Vec<String>,
    },
    /// The broker's certificate is not signed by the CA in --cafile.
    UnknownIssuer,
    ServerCertExpired,
    ServerCertNotYetValid,
    /// Any other problem with the broker's certificate.
    BadServerCert(CertificateError),
    /// The broker asked for a client certificate and none was sent.
    ClientCertRequired,
    /// The broker rejected the client certificate with this TLS alert.
    ClientCertRejected(AlertDescription),
    ClientCertRevoked,
    /// Alert certificate_expired: OpenSSL sends it for expired and for
    /// not-yet-valid certificates alike.
    ClientCertOutOfDate,
    /// The peer answered with bytes that are not TLS (e.g. plain MQTT or HTTP).
    NotTls,
    /// CONNACK refused: bad user name or password.
    BadCredentials,
    /// CONNACK refused: not authorized.
    NotAuthorized,
    /// CONNACK refused: the client id.
    BadClientId,
    /// CONNACK refused: server unavailable.
    ServerUnavailable,
    /// CONNACK refused with another code, in words (`0x97 quota exceeded`).
    Refused(String),
    /// The broker ended the connection with an MQTT 5 DISCONNECT.
    Disconnected(Reason),
    /// An MQTT 5 CONNECT answered by a close or a CONNACK that is not MQTT 5:
    /// a broker that speaks only 3.1.1 (or one that refuses the client).
    NotMqtt5,
    /// The broker closed the connection during the handshake, without a word.
    ClosedDuringHandshake,
    /// Anything else, with the original error text.
    Other(String),
}

impl Failure {
    /// The kind of a connection error, from either protocol.
    pub fn classify(e: &ConnError) -> Failure {
        use rumqttc::v5::ConnectionError as C5;
        match e {
            ConnError::V4(ConnectionError::ConnectionRefused(code)) => Failure::from_code(*code),
            ConnError::V4(ConnectionError::NetworkTimeout) => Failure::TimedOut,
            ConnError::V4(other) => Failure::from_error(other),
            ConnError::V5(C5::ConnectionRefused(code)) => {
                Failure::from_v5_code(reason::v5::connack(*code))
            }
            ConnError::V5(C5::Timeout(_)) => Failure::TimedOut,
            ConnError::V5(C5::MqttState(
                rumqttc::v5::StateError::ConnectionAborted
                | rumqttc::v5::StateError::Deserialization(_),
            )) => Failure::NotMqtt5,
            ConnError::V5(other) => match e.server_disconnect() {
                Some(r) => Failure::Disconnected(r),
                None => Failure::from_error(other),
            },
        }
    }

    /// Walks an error's sources (and the error inside each `io::Error`) for
    /// the first rustls error or telling io error kind.
    pub fn from_error(e: &(dyn StdError + 'static)) -> Failure {
        let mut layer = Some(e);
        while let Some(err) = layer {
            if let Some(tls) = err.downcast_ref::<rustls::Error>() {
                return Failure::from_rustls(tls);
            }
            if let Some(io) = err.downcast_ref::<io::Error>() {
                let inner = io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>());
                if let Some(tls) = inner {
                    return Failure::from_rustls(tls);
                }
                if let Some(f) = Failure::from_io_kind(io.kind()) {
                    return f;
                }
            }
            layer = err.source();
        }
        Failure::Other(e.to_string())
    }

    fn from_code(code: ConnectReturnCode) -> Failure {
        match code {
            ConnectReturnCode::BadUserNamePassword => Failure::BadCredentials,
            ConnectReturnCode::NotAuthorized => Failure::NotAuthorized,
            ConnectReturnCode::BadClientId => Failure::BadClientId,
            ConnectReturnCode::ServiceUnavailable => Failure::ServerUnavailable,
            other => Failure::Refused(format!("{other:?}")),
        }
    }

    fn from_v5_code(code: u8) -> Failure {
        match code {
            0x86 => Failure::BadCredentials,
            0x87 => Failure::NotAuthorized,
            0x85 => Failure::BadClientId,
            0x88 | 0x89 => Failure::ServerUnavailable,
            other => Failure::Refused(Reason::new(other).to_string()),
        }
    }

    fn from_io_kind(kind: io::ErrorKind) -> Option<Failure> {
        use io::ErrorKind as K;
        Some(match kind {
            K::ConnectionRefused => Failure::NothingListening,
            K::TimedOut => Failure::TimedOut,
            K::HostUnreachable | K::NetworkUnreachable => Failure::Unreachable,
            K::UnexpectedEof | K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe => {
                Failure::ClosedDuringHandshake
            }
            _ => return None,
        })
    }

    fn from_rustls(e: &rustls::Error) -> Failure {
        match e {
            rustls::Error::InvalidCertificate(c) => Failure::from_cert_error(c),
            rustls::Error::AlertReceived(a) => Failure::from_alert(*a),
            rustls::Error::InvalidMessage(_) => Failure::NotTls,
            other => Failure::Other(other.to_string()),
        }
    }

    fn from_cert_error(c: &CertificateError) -> Failure {
        use CertificateError as C;
        match c {
            C::NotValidForName | C::NotValidForNameContext { .. } => Failure::NameMismatch {
                carried: Vec::new(),
            },
            C::UnknownIssuer | C::BadSignature => Failure::UnknownIssuer,
            C::Expired | C::ExpiredContext { .. } => Failure::ServerCertExpired,
            C::NotValidYet | C::NotValidYetContext { .. } => Failure::ServerCertNotYetValid,
            other => Failure::BadServerCert(other.clone()),
        }
    }

    fn from_alert(a: AlertDescription) -> Failure {
        use AlertDescription as A;
        match a {
            A::CertificateRequired => Failure::ClientCertRequired,
            A::CertificateRevoked => Failure::ClientCertRevoked,
            A::CertificateExpired => Failure::ClientCertOutOfDate,
            A::UnknownCA
            | A::BadCertificate
            | A::DecryptError
            | A::CertificateUnknown
            | A::UnsupportedCertificate
            | A::AccessDenied
            | A::HandshakeFailure => Failure::ClientCertRejected(a),
            other => Failure::Other(rustls::Error::AlertReceived(other).to_string()),
        }
    }

    /// An unexplained failure against a host name that does not resolve is
    /// a DNS failure: std reports lookups with an io kind no one can match.
    pub fn or_unresolved(self, host: &str) -> Failure {
        use std::net::ToSocketAddrs;
        let unresolved =
            host.parse::<std::net::IpAddr>().is_err() && (host, 0u16).to_socket_addrs().is_err();
        match self {
            Failure::Other(_) if unresolved => Failure::NameNotResolved,
            other => other,
        }
    }

    /// Refines a kind with checks only a live endpoint allows: DNS, and a
    /// plain MQTT broker behind a closed TLS handshake.
    pub async fn refine(self, host: &str, port: u16) -> Failure {
        let failure = self.or_unresolved(host);
        if failure == Failure::ClosedDuringHandshake
            && speaks_plain_mqtt(host, port, Duration::from_secs(2)).await
        {
            return Failure::NotTls;
        }
        failure
    }

    /// mosquitto answers MQTT 3.1.1 clients whose password file refused the
    /// user name and password with "not authorized", not "bad user name or
    /// password": when we sent both, that is what it means.
    pub fn given_credentials(self, sent: bool) -> Failure {
        match self {
            Failure::NotAuthorized if sent => Failure::BadCredentials,
            other => other,
        }
    }

    /// Names the broker certificate carries, for the reissue command.
    pub fn with_carried_names(self, names: Vec<String>) -> Failure {
        match self {
            Failure::NameMismatch { .. } => Failure::NameMismatch { carried: names },
            other => other,
        }
    }

    /// The broker answered at the TCP level (so it is up, just refusing us).
    pub fn reached(&self) -> bool {
        !matches!(
            self,
            Failure::NothingListening
                | Failure::TimedOut
                | Failure::NameNotResolved
                | Failure::Unreachable
        )
    }

    /// The MQTT CONNECT was answered with a refusal: the broker serves.
    pub fn is_connack_refusal(&self) -> bool {
        matches!(
            self,
            Failure::BadCredentials
                | Failure::NotAuthorized
                | Failure::BadClientId
                | Failure::ServerUnavailable
                | Failure::Refused(_)
        )
    }

    /// One line: where, what went wrong, and the fix.
    pub fn explain(&self, at: &str, host: &str, cafile: Option<&Path>) -> String {
        format!("{at}: {}; {}", self.problem(host, cafile), self.fix(host))
    }

    /// What went wrong, in words.
    pub fn problem(&self, host: &str, cafile: Option<&Path>) -> String {
        let ca = cafile.map_or("--cafile".to_string(), |p| {
            format!("--cafile {}", p.display())
        });
        match self {
            Failure::NothingListening => "nothing is listening (connection refused)".into(),
            Failure::TimedOut => "the connection timed out".into(),
            Failure::NameNotResolved => format!("the host name '{host}' does not resolve"),
            Failure::Unreachable => format!("no route to '{host}'"),
            Failure::NameMismatch { carried } if carried.is_empty() => {
                format!("the broker's certificate is not valid for the name '{host}'")
            }
            Failure::NameMismatch { carried } => format!(
                "the broker's certificate is not valid for '{host}'; it carries: {}",
                carried.join(", ")
            ),
            Failure::UnknownIssuer => format!("the broker's certificate is not signed by {ca}"),
            Failure::ServerCertExpired => "the broker's certificate has expired".into(),
            Failure::ServerCertNotYetValid => "the broker's certificate is not valid yet".into(),
            Failure::BadServerCert(c) => format!(
                "the broker's certificate is not acceptable ({})",
                rustls::Error::InvalidCertificate(c.clone())
            ),
            Failure::ClientCertRequired => {
                "the broker requires a client certificate and none was given".into()
            }
            Failure::ClientCertRejected(a) => {
                format!("the broker rejected the client certificate (TLS alert {a:?})")
            }
            Failure::ClientCertRevoked => {
                "the broker says the client certificate is revoked".into()
            }
            Failure::ClientCertOutOfDate => {
                "the broker says the client certificate has expired or is not valid yet".into()
            }
            Failure::NotTls => "the server does not speak TLS on this port".into(),
            Failure::BadCredentials => {
                "the broker refused the MQTT CONNECT: bad user name or password".into()
            }
            Failure::NotAuthorized => "the broker refused the MQTT CONNECT: not authorized".into(),
            Failure::BadClientId => {
                "the broker refused the MQTT CONNECT: client id rejected".into()
            }
            Failure::ServerUnavailable => {
                "the broker refused the MQTT CONNECT: server unavailable".into()
            }
            Failure::Refused(reason) => format!("the broker refused the MQTT CONNECT ({reason})"),
            Failure::Disconnected(reason) => {
                format!("the broker ended the connection with DISCONNECT {reason}")
            }
            Failure::NotMqtt5 => {
                "the broker closed the connection instead of answering the MQTT 5 CONNECT".into()
            }
            Failure::ClosedDuringHandshake => {
                "the broker closed the connection during the handshake".into()
            }
            Failure::Other(text) => text.clone(),
        }
    }

    /// The fix, as a command or a flag to change.
    pub fn fix(&self, host: &str) -> String {
        const RESTART: &str =
            "then restart the broker (`mqttkit broker down && mqttkit broker up`)";
        match self {
            Failure::NothingListening => {
                "start the broker (`mqttkit broker up`) or check --host/--port".into()
            }
            Failure::TimedOut => "check --host/--port and firewalls".into(),
            Failure::NameNotResolved => "check the spelling of --host or your DNS".into(),
            Failure::Unreachable => "check --host and the network route to it".into(),
            Failure::NameMismatch { carried } => {
                let alternative = if carried.is_empty() {
                    "connect by a name it carries (`mqttkit pki list`), or ".to_string()
                } else {
                    "connect by one of those names, or ".to_string()
                };
                format!(
                    "{alternative}reissue only the broker certificate from the same CA with the name added: `{}`, {RESTART}",
                    reissue_broker(carried, Some(host))
                )
            }
            Failure::ServerCertExpired | Failure::ServerCertNotYetValid => format!(
                "reissue only the broker certificate from the same CA: `{}`, {RESTART}",
                reissue_broker(&[], None)
            ),
            Failure::UnknownIssuer => "pass the CA that issued the broker certificate with --cafile".into(),
            Failure::BadServerCert(_) => "check the broker certificate (`mqttkit pki list`)".into(),
            Failure::ClientCertRequired => "pass --cert/--key or --profile".into(),
            Failure::ClientCertRejected(_) => "use a certificate signed by the broker's CA (`mqttkit pki issue NAME`) or pass the CA the broker trusts".into(),
            Failure::ClientCertRevoked => "issue a new client certificate (`mqttkit pki issue NAME --force`)".into(),
            Failure::ClientCertOutOfDate => "check the client certificate's dates (`mqttkit pki list`) and this machine's clock; reissue it with `mqttkit pki issue NAME --force`".into(),
            Failure::NotTls => "check --port (8883 is MQTT over TLS; 1883 is plain MQTT: for that, --host mqtt://HOST:1883 or --no-tls)".into(),
            Failure::BadCredentials => "check the user name and password (-u USER with -P, --password-stdin or MQTTKIT_PASSWORD); on a broker from `mqttkit broker up --auth password`, set it with `mqttkit broker user add USER --password-stdin`".into(),
            Failure::NotAuthorized => "the identity is not allowed: pass -u USER and a password (--password-stdin or MQTTKIT_PASSWORD) if the broker has a password file, else check the certificate's CN; a `mqttkit broker up` broker also refuses a client id that is not the identity's NAME or NAME-… (--client-id)".into(),
            Failure::BadClientId => "pass another --client-id".into(),
            Failure::ServerUnavailable => "retry later".into(),
            Failure::Refused(_) => "see the broker log (`mqttkit broker logs`)".into(),
            Failure::Disconnected(r) if r.code == 0x8e => "another client connected with the same client id; pass a different --client-id".into(),
            Failure::Disconnected(r) if r.code == 0x87 || r.code == 0x90 => "the identity may not use that topic (an ACL or IoT policy denial); check its permissions (`mqttkit doctor`)".into(),
            Failure::Disconnected(_) => "see the broker log (`mqttkit broker logs`)".into(),
            Failure::NotMqtt5 => "if it speaks only MQTT 3.1.1, pass -V 311 (or leave -V out to fall back by itself); else see the broker log".into(),
            Failure::ClosedDuringHandshake => "the client certificate was probably rejected or missing (check --cert/--key and `mqttkit broker logs`), or the port is not a TLS port (check --port; for plain MQTT, --host mqtt://HOST:PORT or --no-tls)".into(),
            Failure::Other(_) => "see the broker log (`mqttkit broker logs`)".into(),
        }
    }
}

/// `pki issue` for the broker certificate only: the CA and every device stay.
/// `pki issue --server` takes the full list of names, so the current ones
/// are repeated (a placeholder when the caller does not know them).
pub fn reissue_broker(carried: &[String], add: Option<&str>) -> String {
    let mut names: Vec<&str> = carried.iter().map(String::as_str).collect();
    if names.is_empty() {
        names.push("<each name it carries now>");
    }
    names.extend(add);
    let hosts: Vec<String> = names.iter().map(|n| format!("--host {n}")).collect();
    format!(
        "mqttkit pki issue broker --server {} --force",
        hosts.join(" ")
    )
}

/// Whether `host:port` answers a plain MQTT CONNECT with a CONNACK: tells
/// "plain MQTT on a TLS port" from a broker that closed the TLS handshake,
/// since mosquitto just drops a ClientHello on a plain listener.
pub async fn speaks_plain_mqtt(host: &str, port: u16, timeout: Duration) -> bool {
    use rumqttc::mqttbytes::v4::{Connect, Packet};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let attempt = async {
        let mut tcp = tokio::net::TcpStream::connect((host, port)).await.ok()?;
        let mut out = bytes::BytesMut::new();
        Connect::new(crate::mqtt::unique_client_id("mqttkit-probe"))
            .write(&mut out)
            .ok()?;
        tcp.write_all(&out).await.ok()?;
        let mut buf = bytes::BytesMut::with_capacity(64);
        loop {
            if tcp.read_buf(&mut buf).await.ok()? == 0 {
                return None;
            }
            match Packet::read(&mut buf, 1024) {
                Ok(p) => return Some(matches!(p, Packet::ConnAck(_))),
                Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => continue,
                Err(_) => return Some(false),
            }
        }
    };
    matches!(tokio::time::timeout(timeout, attempt).await, Ok(Some(true)))
}

/// One line saying what went wrong connecting and what to do about it.
pub fn describe_connect_error(endpoint: &str, err: &ConnError) -> String {
    describe_connect_error_as(endpoint, err, false)
}

/// [`describe_connect_error`] for a client that sent a user name and password.
pub fn describe_connect_error_as(endpoint: &str, err: &ConnError, credentials: bool) -> String {
    // `endpoint` is `Endpoint::describe()`: scheme://host:port, IPv6 in brackets.
    let authority = endpoint.split_once("://").map_or(endpoint, |(_, a)| a);
    let host = authority.rsplit_once(':').map_or(authority, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Failure::classify(err)
        .given_credentials(credentials)
        .or_unresolved(host)
        .explain(endpoint, host, None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// As rumqttc reports a TLS handshake failure: tokio-rustls's io::Error
    /// with the rustls error inside, in rumqttc's TlsError.
    fn handshake(e: rustls::Error) -> ConnectionError {
        let io = io::Error::new(io::ErrorKind::InvalidData, e);
        ConnectionError::Tls(rumqttc::TlsError::Io(io))
    }

    /// As rumqttc reports an alert read after the handshake (TLS 1.3 client auth).
    fn read_error(e: rustls::Error) -> ConnectionError {
        ConnectionError::Io(io::Error::new(io::ErrorKind::InvalidData, e))
    }

    fn cert(c: CertificateError) -> ConnectionError {
        handshake(rustls::Error::InvalidCertificate(c))
    }

    fn alert(a: AlertDescription) -> ConnectionError {
        read_error(rustls::Error::AlertReceived(a))
    }

    fn check(e: ConnectionError, kind: Failure, fix: &str) {
        let e = ConnError::V4(e);
        let got = Failure::classify(&e);
        assert_eq!(got, kind, "{e:?}");
        let line = got.explain("mqtts://h:8883", "h", Some(Path::new("ca.crt")));
        assert!(line.starts_with("mqtts://h:8883: "), "{line}");
        assert!(line.contains(fix), "{line}");
    }

    /// One row per kind: the real error value, the kind, words of the fix.
    #[test]
    fn every_kind_and_its_fix() {
        use io::ErrorKind as K;
        use AlertDescription as A;
        use CertificateError as C;
        use ConnectReturnCode as R;
        let io = |k: K| ConnectionError::Io(io::Error::from(k));
        let refused = ConnectionError::ConnectionRefused;
        let closed = Failure::ClosedDuringHandshake;
        let rejected = "signed by the broker's CA";
        let reissue = "reissue only the broker certificate";
        #[rustfmt::skip]
        let table = [
            (io(K::ConnectionRefused), Failure::NothingListening, "`mqttkit broker up`"),
            (io(K::TimedOut), Failure::TimedOut, "firewalls"),
            (ConnectionError::NetworkTimeout, Failure::TimedOut, "firewalls"),
            (io(K::HostUnreachable), Failure::Unreachable, "network route"),
            (io(K::UnexpectedEof), closed.clone(), "probably rejected or missing"),
            (io(K::ConnectionReset), closed, "probably rejected or missing"),
            (cert(C::UnknownIssuer), Failure::UnknownIssuer, "not signed by --cafile ca.crt"),
            (cert(C::BadSignature), Failure::UnknownIssuer, "pass the CA that issued"),
            (cert(C::Expired), Failure::ServerCertExpired, reissue),
            (cert(C::NotValidYet), Failure::ServerCertNotYetValid, reissue),
            (cert(C::Revoked), Failure::BadServerCert(C::Revoked), "mqttkit pki list"),
            (alert(A::CertificateRequired), Failure::ClientCertRequired, "pass --cert/--key"),
            (alert(A::UnknownCA), Failure::ClientCertRejected(A::UnknownCA), rejected),
            (alert(A::BadCertificate), Failure::ClientCertRejected(A::BadCertificate), rejected),
            (alert(A::DecryptError), Failure::ClientCertRejected(A::DecryptError), rejected),
            (alert(A::HandshakeFailure), Failure::ClientCertRejected(A::HandshakeFailure), rejected),
            (alert(A::CertificateRevoked), Failure::ClientCertRevoked, "a new client certificate"),
            (alert(A::CertificateExpired), Failure::ClientCertOutOfDate, "this machine's clock"),
            (refused(R::BadUserNamePassword), Failure::BadCredentials, "user name and password"),
            (refused(R::NotAuthorized), Failure::NotAuthorized, "certificate's CN"),
            (refused(R::BadClientId), Failure::BadClientId, "another --client-id"),
            (refused(R::ServiceUnavailable), Failure::ServerUnavailable, "retry later"),
            (refused(R::RefusedProtocolVersion), Failure::Refused("RefusedProtocolVersion".into()), "broker log"),
        ];
        for (e, kind, fix) in table {
            check(e, kind, fix);
        }
    }

    #[test]
    fn kinds_beyond_the_fix_line() {
        // The alert's name is shown; the same alert during a TLS 1.2 handshake lands in TlsError.
        let line =
            Failure::classify(&alert(AlertDescription::UnknownCA).into()).explain("at", "h", None);
        assert!(line.contains("TLS alert UnknownCA"), "{line}");
        let e = handshake(rustls::Error::AlertReceived(
            AlertDescription::CertificateRequired,
        ));
        assert_eq!(Failure::classify(&e.into()), Failure::ClientCertRequired);
        assert!(!Failure::ServerCertExpired.fix("h").contains("pki init"));
        assert!(Failure::BadCredentials.is_connack_refusal());
        let refused = Failure::NotAuthorized;
        assert_eq!(
            refused.clone().given_credentials(true),
            Failure::BadCredentials
        );
        assert_eq!(refused.clone().given_credentials(false), refused);
        assert!(!Failure::ClientCertRequired.is_connack_refusal());
        assert!(!Failure::NothingListening.reached());
        assert!(!Failure::TimedOut.reached());
        assert!(Failure::ClosedDuringHandshake.reached());
    }

    #[test]
    fn unresolved_names() {
        let other = Failure::Other("failed to lookup address information".into());
        let f = other.clone().or_unresolved("no-such-host.invalid");
        assert_eq!(f, Failure::NameNotResolved);
        assert!(!f.reached());
        assert!(f
            .explain("x", "no-such-host.invalid", None)
            .contains("does not resolve"));
        assert_eq!(other.clone().or_unresolved("127.0.0.1"), other);
        assert_eq!(
            Failure::NotTls.or_unresolved("no-such-host.invalid"),
            Failure::NotTls
        );
    }

    #[test]
    fn name_mismatch_reissues_only_the_broker_certificate() {
        use CertificateError as C;
        let context = C::NotValidForNameContext {
            expected: rustls::pki_types::ServerName::try_from("h").unwrap(),
            presented: vec!["localhost".into()],
        };
        for c in [C::NotValidForName, context] {
            check(cert(c), Failure::NameMismatch { carried: vec![] }, "mqttkit pki issue broker --server --host <each name it carries now> --host h --force");
        }
        let f = Failure::classify(&cert(C::NotValidForName).into())
            .with_carried_names(vec!["localhost".into(), "127.0.0.1".into()]);
        let line = f.explain("at", "10.0.0.5", None);
        assert!(line.contains("it carries: localhost, 127.0.0.1"), "{line}");
        assert!(line.contains("`mqttkit pki issue broker --server --host localhost --host 127.0.0.1 --host 10.0.0.5 --force`"), "{line}");
        assert!(
            line.contains("mqttkit broker down && mqttkit broker up"),
            "{line}"
        );
        assert!(!line.contains("pki init"), "{line}");
    }

    #[test]
    fn other_keeps_the_text() {
        let e = handshake(rustls::Error::General("odd".into()));
        let f = Failure::classify(&e.into());
        assert!(
            matches!(&f, Failure::Other(t) if t == "unexpected error: odd"),
            "{f:?}"
        );
    }

    /// A loopback listener that answers every connection with `reply`, then closes.
    async fn listener(reply: &'static [u8]) -> u16 {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            while let Ok((mut s, _)) = l.accept().await {
                let mut buf = [0u8; 512];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(reply).await;
                let _ = s.shutdown().await;
            }
        });
        port
    }

    /// Connects through rumqttc over TLS, as `pub`/`sub` do.
    async fn tls_failure(port: u16) -> Failure {
        let config = rustls::ClientConfig::builder_with_provider(crate::mqtt::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let mut opts = rumqttc::MqttOptions::new("t", "127.0.0.1", port);
        opts.set_transport(rumqttc::Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(Arc::new(config)),
        ));
        let (_client, mut eventloop) = rumqttc::AsyncClient::new(opts, 10);
        loop {
            if let Err(e) = eventloop.poll().await {
                return Failure::classify(&e.into());
            }
        }
    }

    #[tokio::test]
    async fn a_plain_mqtt_answer_on_a_tls_port_is_not_tls() {
        let port = listener(&[0x20, 0x02, 0x00, 0x00]).await;
        assert_eq!(tls_failure(port).await, Failure::NotTls);
        assert!(speaks_plain_mqtt("127.0.0.1", port, Duration::from_secs(2)).await);
    }

    #[tokio::test]
    async fn a_peer_that_closes_is_closed_during_handshake() {
        let port = listener(b"").await;
        assert_eq!(tls_failure(port).await, Failure::ClosedDuringHandshake);
        assert!(!speaks_plain_mqtt("127.0.0.1", port, Duration::from_secs(2)).await);
    }

    #[tokio::test]
    async fn a_closed_port_is_nothing_listening() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        let f = tls_failure(port).await;
        assert_eq!(f, Failure::NothingListening);
        assert!(!f.reached());
    }
}

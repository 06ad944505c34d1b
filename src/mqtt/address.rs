//! Broker addresses as URLs (`mqtt://[user@]host[:1883]`, `mqtts://host[:8883]`,
//! `wss://host[:443]/mqtt`) wherever a host name is accepted, and the
//! password that goes with a user name, kept out of logs and errors.
//!
//! A URL says the transport too, so the one string people copy from a
//! broker's documentation is enough; a password in the URL is refused (it
//! would sit in shell history and in `ps`).

use anyhow::{bail, Result};

use super::Transport;

/// A host flag or profile field, split into its parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    pub host: String,
    /// Set by a URL's scheme.
    pub transport: Option<Transport>,
    pub port: Option<u16>,
    pub user: Option<String>,
}

/// Parses `text` (a bare host name or a URL) given as `what` (e.g. `--host`).
pub fn parse(what: &str, text: &str) -> Result<Address> {
    if !text.contains("://") {
        return Ok(Address {
            host: text.to_string(),
            transport: None,
            port: None,
            user: None,
        });
    }
    let url = url::Url::parse(text).map_err(|e| {
        anyhow::anyhow!(
            "{what} {text}: not a valid URL ({e}); write e.g. mqtts://broker.example.com:8883"
        )
    })?;
    let transport = match url.scheme() {
        "mqtt" | "tcp" => Transport::Tcp,
        "mqtts" | "ssl" | "tls" => Transport::Tls,
        "wss" => Transport::Wss,
        other => bail!(
            "{what} {text}: unknown scheme '{other}'; use mqtt:// (plain TCP), mqtts:// (TLS) or wss:// (TLS WebSocket)"
        ),
    };
    let path_ok = match transport {
        Transport::Wss => matches!(url.path(), "" | "/" | "/mqtt"),
        _ => matches!(url.path(), "" | "/"),
    };
    if !path_ok || url.query().is_some() {
        bail!(
            "{what} {text}: unexpected path '{}'; only wss:// takes one, and it is /mqtt",
            url.path()
        );
    }
    if url.password().is_some() {
        bail!("{what}: the URL holds a password; remove it from the URL and pass it with --password-stdin or MQTTKIT_PASSWORD");
    }
    let Some(host) = url.host_str().filter(|h| !h.is_empty()) else {
        bail!("{what} {text}: no host name; write e.g. mqtt://localhost:1883");
    };
    let user = match url.username() {
        "" => None,
        u => Some(
            percent_encoding::percent_decode_str(u)
                .decode_utf8_lossy()
                .into_owned(),
        ),
    };
    Ok(Address {
        host: host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string(),
        transport: Some(transport),
        port: url.port(),
        user,
    })
}

/// A password: never printed (`Debug` shows `***`, there is no `Display`).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

    /// The password itself, for the CONNECT packet only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// clap's value parser for `-P PASS`.
pub fn parse_secret(s: &str) -> Result<Secret, String> {
    Ok(Secret::new(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_hosts() {
        let a = parse("--host", "mqtt://alice@localhost:1884").unwrap();
        assert_eq!(a.transport, Some(Transport::Tcp));
        assert_eq!((a.host.as_str(), a.port), ("localhost", Some(1884)));
        assert_eq!(a.user.as_deref(), Some("alice"));
        let a = parse("--host", "mqtts://[::1]").unwrap();
        assert_eq!((a.host.as_str(), a.port), ("::1", None));
        assert_eq!(a.transport, Some(Transport::Tls));
        let a = parse("--host", "wss://b.example.com/mqtt").unwrap();
        assert_eq!(a.transport, Some(Transport::Wss));
        assert_eq!(parse("--host", "h").unwrap().transport, None);
        let e = parse("--host", "mqtt://u:pw@h").unwrap_err().to_string();
        assert!(e.contains("holds a password") && !e.contains("pw"), "{e}");
        let e = parse("--host", "http://h").unwrap_err().to_string();
        assert!(e.contains("unknown scheme 'http'"), "{e}");
        assert!(parse("--host", "mqtt://h/x").is_err());
        assert_eq!(format!("{:?}", Secret::new("pw")), "***");
    }
}

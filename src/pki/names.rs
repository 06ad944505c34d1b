//! Validation of host names and certificate identities.

use std::fmt;
use std::net::IpAddr;

use rcgen::SanType;

/// A name the broker is reached by: a DNS name or an IP address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostName {
    Dns(String),
    Ip(IpAddr),
}

impl HostName {
    pub fn parse(raw: &str) -> anyhow::Result<Self> {
        let s = raw.trim();
        // Bracketed IPv6, as typed in URLs.
        let unbracketed = s
            .strip_prefix('[')
            .and_then(|x| x.strip_suffix(']'))
            .unwrap_or(s);
        if let Ok(ip) = unbracketed.parse::<IpAddr>() {
            return Ok(HostName::Ip(ip));
        }
        if is_dns_name(s) {
            return Ok(HostName::Dns(s.to_ascii_lowercase()));
        }
        anyhow::bail!(
            "--host '{raw}' is neither a DNS name nor an IP address; use e.g. broker.local, 192.168.1.10 or ::1"
        )
    }

    pub fn to_san(&self) -> SanType {
        match self {
            HostName::Dns(d) => SanType::DnsName(d.clone().try_into().expect("validated DNS name")),
            HostName::Ip(ip) => SanType::IpAddress(*ip),
        }
    }
}

impl fmt::Display for HostName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostName::Dns(d) => f.write_str(d),
            HostName::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

/// RFC 1123 host names, with an optional leading `*.` wildcard label.
fn is_dns_name(s: &str) -> bool {
    let body = s.strip_prefix("*.").unwrap_or(s);
    let body = body.strip_suffix('.').unwrap_or(body);
    if body.is_empty() || body.len() > 253 {
        return false;
    }
    // An all-numeric dotted name is a mistyped IP address, not a host name.
    if body
        .split('.')
        .all(|l| l.chars().all(|c| c.is_ascii_digit()))
    {
        return false;
    }
    body.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        assert_eq!(
            HostName::parse("127.0.0.1").unwrap(),
            HostName::Ip("127.0.0.1".parse().unwrap())
        );
        assert_eq!(
            HostName::parse("[::1]").unwrap(),
            HostName::Ip("::1".parse().unwrap())
        );
        assert_eq!(
            HostName::parse("Broker.Local").unwrap(),
            HostName::Dns("broker.local".into())
        );
        assert!(HostName::parse("*.example.com").is_ok());
        for bad in [
            "a b",
            "",
            "-x.com",
            "1.2.3.999",
            "x_y.com",
            "a..b",
            "http://x",
        ] {
            let e = HostName::parse(bad).unwrap_err().to_string();
            assert!(e.contains("neither a DNS name nor an IP"), "{bad}: {e}");
        }
    }
}

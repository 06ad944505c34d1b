//! MQTT 5 publish properties from the command line: `--property KEY=VALUE`,
//! `--message-expiry`, `--content-type`, and the content type mqttkit sets
//! by itself on protobuf payloads (`application/x-protobuf; proto=TYPE`,
//! so a subscriber that did not choose the topic can still tell what it
//! holds).

use std::time::Duration;

use anyhow::{bail, Result};
use clap::Args;

use crate::mqtt::{Props, Protocol};

/// The content type of a protobuf payload of `message_type`.
pub fn protobuf_content_type(message_type: &str) -> String {
    format!("application/x-protobuf; proto={message_type}")
}

/// Publish properties (MQTT 5 only).
#[derive(Debug, Clone, Default, Args)]
pub struct PropsArgs {
    /// MQTT 5 user property sent with every message (repeatable); `sub` shows them.
    #[arg(long = "property", value_name = "KEY=VALUE", value_parser = parse_property, help_heading = "MQTT 5")]
    pub user: Vec<(String, String)>,
    /// MQTT 5 message expiry: the broker discards a message no subscriber
    /// took within this time (30s, 10m, 1h).
    #[arg(long, value_name = "DURATION", value_parser = crate::units::parse_duration, help_heading = "MQTT 5")]
    pub message_expiry: Option<Duration>,
    /// MQTT 5 content type (default for protobuf payloads:
    /// `application/x-protobuf; proto=TYPE`; `--content-type ''`: none).
    #[arg(long, value_name = "MIME", help_heading = "MQTT 5")]
    pub content_type: Option<String>,
}

impl PropsArgs {
    /// The properties every message carries: the flags, plus the protobuf
    /// content type when the payload is protobuf of `protobuf_type`.
    /// `protocol` is the one asked for with -V (`None`: 5 with fallback).
    pub fn resolve(
        &self,
        protocol: Option<Protocol>,
        protobuf_type: Option<&str>,
    ) -> Result<Option<Props>> {
        let asked = !self.user.is_empty() || self.message_expiry.is_some();
        if protocol == Some(Protocol::V311) && (asked || self.content_type.is_some()) {
            bail!("--property/--message-expiry/--content-type: MQTT 3.1.1 has no properties; drop -V 311 (MQTT 5 is the default)");
        }
        if protocol == Some(Protocol::V311) {
            return Ok(None);
        }
        let message_expiry = match self.message_expiry {
            None => None,
            Some(d) if d < Duration::from_secs(1) => bail!(
                "--message-expiry {d:?}: MQTT counts expiry in whole seconds; use at least 1s"
            ),
            Some(d) => Some(u32::try_from(d.as_secs()).unwrap_or(u32::MAX)),
        };
        let content_type = match self.content_type.as_deref() {
            Some("") => None,
            Some(c) => Some(c.to_string()),
            None => protobuf_type.map(protobuf_content_type),
        };
        let props = Props {
            user: self.user.clone(),
            content_type,
            message_expiry,
            ..Props::default()
        };
        Ok((!props.is_empty()).then_some(props))
    }
}

/// `KEY=VALUE` (the value may hold `=`; the key may not be empty).
pub fn parse_property(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!(
            "'{s}' is not KEY=VALUE; e.g. --property site=plant-7"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn properties_from_flags() {
        assert_eq!(parse_property("a=b=c"), Ok(("a".into(), "b=c".into())));
        assert!(parse_property("=x")
            .unwrap_err()
            .starts_with("'=x' is not KEY=VALUE"));
        let args = PropsArgs {
            user: vec![("k".into(), "v".into())],
            message_expiry: Some(Duration::from_secs(90)),
            content_type: None,
        };
        let p = args.resolve(None, Some("acme.v1.M")).unwrap().unwrap();
        assert_eq!(p.message_expiry, Some(90));
        assert_eq!(
            p.content_type.as_deref(),
            Some("application/x-protobuf; proto=acme.v1.M")
        );
        let e = args.resolve(Some(Protocol::V311), None).unwrap_err();
        assert!(e.to_string().contains("drop -V 311"), "{e}");
        // Nothing asked for over 3.1.1: no properties, no error.
        let none = PropsArgs::default();
        assert_eq!(none.resolve(Some(Protocol::V311), Some("T")).unwrap(), None);
        assert_eq!(none.resolve(None, None).unwrap(), None);
        let no_type = PropsArgs {
            content_type: Some(String::new()),
            ..PropsArgs::default()
        };
        assert_eq!(no_type.resolve(None, Some("T")).unwrap(), None);
        let short = PropsArgs {
            message_expiry: Some(Duration::from_millis(500)),
            ..PropsArgs::default()
        };
        assert!(short.resolve(None, None).is_err());
    }
}

//! Rendering `templates/` (embedded in the binary) with minijinja.

use anyhow::{Context, Result};
use minijinja::Environment;
use serde::Serialize;

const MOSQUITTO_CONF: &str = include_str!("../../templates/mosquitto.conf");
const TLS: &str = include_str!("../../templates/tls");
const ACL: &str = include_str!("../../templates/acl");
const COMPOSE: &str = include_str!("../../templates/compose.yaml");

/// Messages a client may have queued: large enough that a persistent QoS 1
/// subscriber can be offline for minutes of a 1,000 msg/s stream.
pub const MAX_QUEUED_MESSAGES: u64 = 1_000_000;
/// Un-acked QoS 1 deliveries in flight per client.
pub const MAX_INFLIGHT_MESSAGES: u64 = 1000;

#[derive(Debug, Serialize)]
pub struct ConfVars<'a> {
    pub port: u16,
    pub bind: Option<&'a str>,
    pub websockets_port: Option<u16>,
    pub user: Option<&'a str>,
    pub auth: &'a str,
    pub password_file: bool,
    pub certs: &'a str,
    /// `certs/crl.pem` exists (`pki revoke`): render `crlfile`.
    pub crl: bool,
    pub max_queued_messages: u64,
    pub queue_mib: u64,
    pub max_inflight_messages: u64,
}

#[derive(Debug, Serialize)]
pub struct ComposeVars<'a> {
    pub container_name: &'a str,
    pub port: u16,
    pub publish_port: String,
    pub websockets_port: Option<u16>,
    pub publish_websockets_port: String,
    pub mosquitto_dir: &'a str,
    pub certs_dir: &'a str,
}

fn env() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_keep_trailing_newline(true);
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    for (name, src) in [
        ("mosquitto.conf", MOSQUITTO_CONF),
        ("tls", TLS),
        ("acl", ACL),
        ("compose.yaml", COMPOSE),
    ] {
        env.add_template(name, src)
            .expect("embedded templates parse");
    }
    env
}

fn render(name: &str, ctx: impl Serialize) -> Result<String> {
    env()
        .get_template(name)
        .and_then(|t| t.render(ctx))
        .with_context(|| format!("rendering templates/{name}"))
}

pub fn mosquitto_conf(vars: &ConfVars<'_>) -> Result<String> {
    render("mosquitto.conf", vars)
}

pub fn acl(servers: &[String]) -> Result<String> {
    render("acl", minijinja::context! { servers })
}

pub fn compose(vars: &ComposeVars<'_>) -> Result<String> {
    render("compose.yaml", vars)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(auth: &str) -> ConfVars<'_> {
        ConfVars {
            port: 8883,
            bind: Some("127.0.0.1"),
            websockets_port: Some(8884),
            user: Some("mosquitto"),
            auth,
            password_file: auth != "cert",
            certs: "../certs",
            crl: false,
            max_queued_messages: MAX_QUEUED_MESSAGES,
            queue_mib: 200,
            max_inflight_messages: MAX_INFLIGHT_MESSAGES,
        }
    }

    #[test]
    fn conf_has_mtls_listeners_and_limits() {
        let c = mosquitto_conf(&vars("cert")).unwrap();
        assert!(c.contains("listener 8883 127.0.0.1\nprotocol mqtt\ncafile ../certs/ca.crt"));
        assert!(c.contains("listener 8884 127.0.0.1\nprotocol websockets"));
        assert_eq!(c.matches("require_certificate true").count(), 2);
        assert_eq!(c.matches("use_identity_as_username true").count(), 2);
        assert!(c.contains("allow_anonymous false"));
        assert!(c.contains("max_queued_messages 1000000"));
        assert!(!c.contains("password_file"));
        let p = mosquitto_conf(&vars("password")).unwrap();
        assert!(p.contains("password_file passwd"));
        assert!(p.contains("require_certificate false"));
    }

    #[test]
    fn acl_scopes_devices_and_servers() {
        let a = acl(&["server".into(), "ops".into()]).unwrap();
        assert!(a.contains("pattern write devices/%u/telemetry"));
        assert!(a.contains("pattern read devices/%u/commands"));
        assert!(
            a.contains("user ops\ntopic read devices/+/telemetry\ntopic write devices/+/commands")
        );
    }
}

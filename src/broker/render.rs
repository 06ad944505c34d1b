//! Rendering `templates/` (embedded in the binary) with minijinja.

use anyhow::{Context, Result};
use minijinja::Environment;
use serde::Serialize;

use crate::schema::{Role, Schema};

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
    pub autosave_on_changes: bool,
    pub autosave_interval: u32,
    /// Load the client-id binding plugin (plugin.rs) from `plugin_file`.
    pub bind_client_ids: bool,
    pub plugin_file: &'a str,
    /// Its options: `cert` or `username`, and the server identities (a,b).
    pub plugin_identity: &'a str,
    pub plugin_servers: &'a str,
    /// The ACL's read rules, for the plugin's SUBSCRIBE check: every
    /// identity's (with %u) and the server identities'.
    pub plugin_device_read: &'a [String],
    pub plugin_server_read: &'a [String],
}

#[derive(Debug, Serialize)]
pub struct ComposeVars<'a> {
    pub container_name: &'a str,
    pub image: &'a str,
    /// `UID:GID` the container runs as.
    pub user: &'a str,
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

/// Who may use which topics: devices their own (`%u` is the device level),
/// server identities every device's.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct AclTree {
    pub device_write: Vec<String>,
    pub device_read: Vec<String>,
    pub server_read: Vec<String>,
    pub server_write: Vec<String>,
}

impl AclTree {
    /// mqttkit's own tree: `devices/{id}/telemetry|commands`.
    pub fn builtin() -> Self {
        AclTree {
            // Replies: the answers to commands (MQTT 5 request/response).
            device_write: vec![
                crate::mqtt::telemetry_topic("%u"),
                crate::mqtt::reply_topic("%u"),
            ],
            device_read: vec![crate::mqtt::command_topic("%u")],
            server_read: vec![
                crate::mqtt::telemetry_topic("+"),
                crate::mqtt::reply_topic("+"),
            ],
            server_write: vec![crate::mqtt::command_topic("+")],
        }
    }

    /// The tree of a user's schema: its telemetry and command rules.
    pub fn from_schema(schema: &Schema) -> Result<Self> {
        let tree = AclTree {
            device_write: schema.device_topics(Role::Telemetry, "%u"),
            device_read: schema.device_topics(Role::Command, "%u"),
            server_read: schema.filters(Role::Telemetry),
            server_write: schema.filters(Role::Command),
        };
        if tree.device_write.is_empty() && tree.device_read.is_empty() {
            anyhow::bail!("--schema: no [[topic]] has role = \"telemetry\" or \"command\", so the ACL would let devices use no topic; give the device topics a role");
        }
        Ok(tree)
    }
}

/// The ACL file; `schema` names the schema the tree came from (a comment).
pub fn acl(servers: &[String], tree: &AclTree, schema: Option<&str>) -> Result<String> {
    render("acl", minijinja::context! { servers, tree, schema })
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
            autosave_on_changes: false,
            autosave_interval: 10,
            bind_client_ids: true,
            plugin_file: "mqttkit_bind.so",
            plugin_identity: if auth == "cert" { "cert" } else { "username" },
            plugin_servers: "server,ops",
            plugin_device_read: &[],
            plugin_server_read: &[],
        }
    }

    #[test]
    fn conf_has_mtls_listeners_and_limits() {
        let c = mosquitto_conf(&vars("cert")).unwrap();
        assert!(c.contains("listener 8883 127.0.0.1\nprotocol mqtt\ncafile ../certs/ca.crt"));
        assert!(c.contains("listener 8884 127.0.0.1\nprotocol websockets"));
        assert_eq!(c.matches("require_certificate true").count(), 2);
        // The binding plugin sets the CN as user name: mosquitto would skip it otherwise.
        assert_eq!(c.matches("use_identity_as_username false").count(), 2);
        assert!(c.contains(
            "\nplugin ./mqttkit_bind.so\nplugin_opt_identity cert\nplugin_opt_servers server,ops\n"
        ));
        let tree = AclTree::builtin();
        let with_reads = mosquitto_conf(&ConfVars {
            plugin_device_read: &tree.device_read,
            plugin_server_read: &tree.server_read,
            ..vars("cert")
        })
        .unwrap();
        assert!(with_reads.contains(
            "plugin_opt_servers server,ops\nplugin_opt_device_read devices/%u/commands\nplugin_opt_server_read devices/+/telemetry\nplugin_opt_server_read devices/+/replies\n"
        ), "{with_reads}");
        let unbound = mosquitto_conf(&ConfVars {
            bind_client_ids: false,
            ..vars("cert")
        })
        .unwrap();
        assert_eq!(unbound.matches("use_identity_as_username true").count(), 2);
        assert!(!unbound.contains("\nplugin "), "{unbound}");
        assert!(c.contains("allow_anonymous false"));
        assert!(c.contains("max_queued_messages 1000000"));
        assert!(c.contains("\nautosave_on_changes false\nautosave_interval 10\n"));
        assert!(!c.contains("password_file"));
        let p = mosquitto_conf(&vars("password")).unwrap();
        assert!(p.contains("password_file passwd"));
        assert!(p.contains("require_certificate false"));
        assert!(p.contains("plugin_opt_identity username\n"));
    }

    #[test]
    fn compose_records_the_image_user_and_loopback_ports() {
        let c = compose(&ComposeVars {
            container_name: "mqttkit-mosquitto",
            image: "registry.local:5000/eclipse-mosquitto:2.0.18",
            user: "1883:1883",
            port: 8883,
            publish_port: "127.0.0.1:8883".into(),
            websockets_port: None,
            publish_websockets_port: String::new(),
            mosquitto_dir: "./out/mosquitto",
            certs_dir: "./out/certs",
        })
        .unwrap();
        assert!(c.contains("    image: \"registry.local:5000/eclipse-mosquitto:2.0.18\"\n"));
        assert!(c.contains("    user: \"1883:1883\"\n"));
        assert!(c.contains("      - \"127.0.0.1:8883:8883\"\n"));
    }

    #[test]
    fn acl_scopes_devices_and_servers() {
        let a = acl(&["server".into(), "ops".into()], &AclTree::builtin(), None).unwrap();
        assert!(a.contains("pattern write devices/%u/telemetry"));
        assert!(a.contains("pattern read devices/%u/commands"));
        assert!(a.contains("pattern write devices/%u/replies"));
        assert!(a.contains(
            "user ops\ntopic read devices/+/telemetry\ntopic read devices/+/replies\ntopic write devices/+/commands"
        ));
    }
}

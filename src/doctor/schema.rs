//! `doctor --schema`: the permission steps on the topics of a user's map
//! instead of `devices/ID/...`. A device must be able to write each of its
//! telemetry topics and read each of its command topics; the server reads
//! every device's telemetry and writes a device's commands. As for the
//! built-in tree, each permission is proven by a message that arrives
//! through the peer identity, never by an acknowledgement. Labels other than
//! `{device}` get a sample value: the `--label` given for them, else
//! "doctor".

use std::time::Duration;

use anyhow::{bail, Result};

use super::{peer_device, peer_endpoint, round_trip, DoctorArgs, Report};
use crate::mqtt::{ConnectSpec, Endpoint, Role};
use crate::schema::{template, Labels, Role as SchemaRole, Schema};

/// The label value for a `{label}` nobody gave.
const SAMPLE: &str = "doctor";

/// One permission to prove.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Probe {
    /// Inbound: the peer publishes `topic`, the identity reads it through
    /// `filter`. Outbound: the identity publishes `topic`, the peer reads it.
    pub inbound: bool,
    pub filter: String,
    pub topic: String,
}

/// The probes of the identity under test: a device (`device`) or the server
/// (with `peer_device` as the device on the other end).
pub(super) fn probes(
    schema: &Schema,
    device: Option<&str>,
    peer_device: &str,
    given: &[(String, String)],
) -> Result<Vec<Probe>> {
    let id = device.unwrap_or(peer_device);
    let mut labels: Labels = given.iter().cloned().collect();
    labels.insert(template::DEVICE.to_string(), id.to_string());
    let mut out = Vec::new();
    for rule in schema.rules.iter().filter(|r| r.role.is_some()) {
        let t = &rule.template;
        for name in t.labels() {
            labels
                .entry(name.to_string())
                .or_insert_with(|| SAMPLE.to_string());
        }
        let topic = t.topic(&labels)?;
        let telemetry = rule.role == Some(SchemaRole::Telemetry);
        // A device writes telemetry and reads commands; the server the reverse.
        let inbound = telemetry == device.is_none();
        let filter = match (inbound, device) {
            (true, Some(d)) => t.filter_with(&Labels::from([(template::DEVICE.into(), d.into())])),
            (true, None) => t.filter(),
            (false, _) => topic.clone(),
        };
        out.push(Probe {
            inbound,
            filter,
            topic,
        });
    }
    if out.is_empty() {
        bail!("--schema: no [[topic]] has a role; doctor checks the telemetry (role = \"telemetry\") and command (role = \"command\") topics of the map");
    }
    Ok(out)
}

/// The probes `--schema` asks for, or `None` without a schema (the
/// built-in tree). Everything wrong with the map is an error here.
pub(super) fn plan(args: &DoctorArgs, device: Option<&str>) -> Result<Option<Vec<Probe>>> {
    let src = args.schema.source();
    if src.is_empty() {
        if !args.labels.is_empty() {
            bail!("--label: only with --schema (mqttkit's own topics have no labels)");
        }
        return Ok(None);
    }
    let schema = Schema::load(&src)?;
    let peer_device = args
        .conn
        .spec()
        .map(|c| peer_device(&c))
        .unwrap_or_default();
    probes(&schema, device, &peer_device, &args.labels).map(Some)
}

/// Proves each probe through the profile's peer identity; the first that
/// fails ends the checks.
pub(super) async fn check(
    report: &mut Report,
    conn: &ConnectSpec,
    endpoint: &Endpoint,
    device: Option<&str>,
    probes: &[Probe],
    client_id: &str,
    timeout: Duration,
) {
    let peer_device = peer_device(conn);
    let peer_role = match device {
        Some(_) => Role::Server,
        None => Role::Device(&peer_device),
    };
    let Some(peer) = peer_endpoint(conn, endpoint, peer_role) else {
        let needs = match device {
            Some(_) => "the server identity".to_string(),
            None => format!("device identity '{peer_device}'"),
        };
        report.fail(
            "publish permission",
            format!("no peer identity in the profile to prove the mapped topics by delivery (needs {needs})"),
            "run doctor with the profile `mqttkit broker up` wrote (--profile local), which has both identities",
        );
        return;
    };
    for p in probes {
        let (sender, receiver) = if p.inbound {
            (&peer, endpoint)
        } else {
            (endpoint, &peer)
        };
        let result = round_trip(sender, receiver, &p.filter, &p.topic, client_id, timeout).await;
        let ok = result.is_ok();
        record(report, p, result);
        if !ok {
            return;
        }
    }
}

fn record(report: &mut Report, p: &Probe, result: Result<f64, String>) {
    let fix = "the broker's ACL/policy does not allow it for this identity: check the certificate CN (`mqttkit pki list`) and the ACL (`mqttkit broker up --schema F` renders it from this map)";
    match (p.inbound, result) {
        (true, Ok(ms)) => report.pass(
            "subscribe permission",
            format!(
                "'{}': a message from the peer identity to '{}' arrived in {ms:.1} ms",
                p.filter, p.topic
            ),
        ),
        (true, Err(why)) => report.fail(
            "subscribe permission",
            format!(
                "a message to '{}' did not reach this identity's subscription to '{}' ({why})",
                p.topic, p.filter
            ),
            fix,
        ),
        (false, Ok(ms)) => report.pass(
            "publish permission",
            format!("'{}' delivered to the peer identity in {ms:.1} ms", p.topic),
        ),
        (false, Err(why)) => report.fail(
            "publish permission",
            format!("a message to '{}' did not arrive ({why})", p.topic),
            fix,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::tests::plant_schema;

    #[test]
    fn a_device_writes_its_telemetry_and_reads_its_commands() {
        let (schema, _dir) = plant_schema();
        let site = [("site".to_string(), "osaka".to_string())];
        let p = probes(&schema, Some("pump-7"), "device-001", &site).unwrap();
        assert_eq!(
            p,
            [
                Probe {
                    inbound: false,
                    filter: "plant/osaka/pump-7/metrics".into(),
                    topic: "plant/osaka/pump-7/metrics".into()
                },
                Probe {
                    inbound: true,
                    filter: "plant/+/pump-7/commands".into(),
                    topic: "plant/osaka/pump-7/commands".into()
                },
            ]
        );
        // The server reads everyone's telemetry; a label nobody gave is "doctor".
        let p = probes(&schema, None, "device-001", &[]).unwrap();
        assert_eq!(p[0].filter, "plant/+/+/metrics");
        assert_eq!(p[0].topic, "plant/doctor/device-001/metrics");
        assert!(p[0].inbound && !p[1].inbound);
        assert_eq!(p[1].topic, "plant/doctor/device-001/commands");
    }
}

//! `pub command --schema` and `sub command --schema`: the user's command
//! type on the command topics of the map (`role = "command"`), instead of
//! mqttkit's `Command` on `devices/ID/commands`.
//!
//! Sending is the one publisher (`publish::publish_stream`) with a source of
//! one message, so QoS 1 and 2 mean what they mean for telemetry: the run
//! succeeds only once the broker acknowledged it. Receiving prints what
//! `sub -t` prints: each message decoded by the map as one JSON object, and
//! one that does not decode as hex with the error, never dropped.

use std::process::ExitCode;

use anyhow::{bail, Result};
use bytes::Bytes;
use prost::Message as _;
use serde::Serialize;

use super::publish::{publish_stream, Source, Stream};
use super::raw::RawPrinter;
use super::{device_id, validate_device_id, PubCommandArgs, SubCommandArgs};
use crate::mqtt::{command_topic, Role};
use crate::schema::{codec, template, Labels, Role as SchemaRole, Rule, Schema};

/// What `pub command --schema` prints on stdout once the broker has it.
#[derive(Serialize)]
struct Sent<'a> {
    topic: &'a str,
    device_id: &'a str,
    #[serde(rename = "type")]
    type_name: &'a str,
    /// The command as sent, in the canonical proto3 JSON mapping.
    message: serde_json::Value,
}

/// The command rule: the map's first `role = "command"`, or with the
/// one-off form (`--proto --message`) that type on devices/ID/commands.
fn command_rule(schema: &Schema, one_off: bool) -> Result<&Rule> {
    match (schema.rule_of(SchemaRole::Command), schema.rules.last()) {
        (Some(rule), _) => Ok(rule),
        (None, Some(catch_all)) if one_off => Ok(catch_all),
        _ => bail!("--schema: no [[topic]] has role = \"command\"; mark the devices' command topic with it"),
    }
}

/// The topic `device`'s commands go to: the rule's template with `{device}`
/// and the `--label` values (a label it has and nobody gave is an error
/// naming it), or mqttkit's own topic for the one-off form.
fn topic_for(rule: &Rule, device: &str, labels: &[(String, String)]) -> Result<String> {
    if rule.role.is_none() {
        return Ok(command_topic(device));
    }
    let mut all: Labels = labels.iter().cloned().collect();
    all.insert(template::DEVICE.to_string(), device.to_string());
    rule.template.topic(&all)
}

/// `pub command --schema F --device-id D --json '{...}'`.
pub async fn publish(args: PubCommandArgs, schema: Schema) -> Result<ExitCode> {
    validate_device_id(&args.device_id)?;
    if args.wait_reply.is_some() {
        bail!("--wait-reply with --schema: request/response is built for mqttkit's own Command and CommandReply on devices/ID/replies; drop --schema, or --wait-reply");
    }
    if args.name.is_some() || !args.params.is_empty() {
        bail!("--name/--param: they build mqttkit's own Command; with a schema give your command type as --json '{{...}}'");
    }
    let rule = command_rule(&schema, args.schema.message_type.is_some())?;
    let type_name = rule.message.full_name();
    let Some(Some(json)) = &args.json else {
        bail!("--json: missing; with a schema the command is your {type_name} as JSON, e.g. --json '{{...}}'");
    };
    let topic = topic_for(rule, &args.device_id, &args.labels)?;
    let msg = codec::message_from_json(&rule.message, json)
        .map_err(|e| anyhow::anyhow!("--json: {e}"))?;
    let payload = msg.encode_to_vec();
    if payload.is_empty() {
        bail!("--json: every field is at its default, so {type_name} encodes to an empty payload, which subscribers take for a cleared retained message; set at least one field");
    }
    let message = codec::to_json(&msg)?;
    let endpoint = args.conn.spec()?.resolve(Role::Server)?;
    let client_id = endpoint.client_id.clone();
    let stream = Stream {
        label: format!("pub command {}", args.device_id),
        topic: topic.clone(),
        qos: args.qos,
        retain: false,
        window: 1,
        max_queued: 1,
        count: None,
        rate: None,
        reconnect_timeout: std::time::Duration::from_secs(30),
        // A chosen client id resumes its session after a reconnect.
        persistent: client_id.is_some(),
        json: false,
        device_id: args.device_id.clone(),
        props: args.props.resolve(args.conn.protocol, Some(type_name))?,
    };
    let client_id = client_id
        .unwrap_or_else(|| crate::mqtt::client_id::unique_within(&endpoint, "mqttkit-cmd"));
    let code = publish_stream(&endpoint, &client_id, stream, one(payload)).await?;
    if code == ExitCode::SUCCESS {
        crate::output::print_json(&Sent {
            topic: &topic,
            device_id: &args.device_id,
            type_name,
            message,
        })?;
    }
    Ok(code)
}

/// A source of exactly one payload.
fn one(payload: Vec<u8>) -> Source {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    // The channel has room for it; dropping `tx` ends the source after it.
    let _ = tx.try_send(vec![Bytes::from(payload)]);
    Source::raw(rx)
}

/// `sub command --schema F [--device-id D]`: the device's command topics,
/// every other label `+`.
pub async fn subscribe(args: SubCommandArgs, schema: Schema) -> Result<ExitCode> {
    let device = device_id(&args.conn, args.device_id.as_deref())?;
    let mut filters = schema.device_topics(SchemaRole::Command, &device);
    if filters.is_empty() {
        // Errors when there is no command rule and no one-off type.
        command_rule(&schema, args.schema.message_type.is_some())?;
        filters.push(command_topic(&device));
    }
    let endpoint = args.conn.spec()?.resolve(Role::Device(&device))?;
    let fixed_id = format!("{device}-sub-commands");
    let printer = RawPrinter::decoding(schema);
    super::subscribe::subscribe(&endpoint, &args.common, &fixed_id, filters, printer).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::tests::plant_schema;

    #[test]
    fn a_command_goes_to_the_mapped_topic_and_needs_every_label() {
        let (schema, _dir) = plant_schema();
        let rule = command_rule(&schema, false).unwrap();
        assert_eq!(rule.message.full_name(), "acme.plant.v1.Command");
        let site = [("site".to_string(), "osaka".to_string())];
        assert_eq!(
            topic_for(rule, "pump-7", &site).unwrap(),
            "plant/osaka/pump-7/commands"
        );
        let e = topic_for(rule, "pump-7", &[]).unwrap_err().to_string();
        assert!(e.contains("no value for {site}"), "{e}");
        assert!(e.contains("--label site="), "{e}");
    }
}

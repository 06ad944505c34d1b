//! Payloads to and from JSON by a message descriptor, in the canonical proto3
//! JSON mapping (what `json_format.MessageToDict` and `protoc --decode`'s JSON
//! peers print: lowerCamelCase names, 64-bit integers as strings, enums by
//! name, Timestamps as RFC 3339, default values left out).

use anyhow::{bail, Result};
use prost::Message;
use prost_reflect::{
    DeserializeOptions, DynamicMessage, FieldDescriptor, MessageDescriptor, ReflectMessage,
    SerializeOptions,
};
use serde_json::Value;

/// Decodes `payload` as `desc` into its JSON value. An empty payload is
/// refused: it is a valid (all-default) message, but on MQTT it is what
/// clearing a retained message sends, not data.
pub fn decode(desc: &MessageDescriptor, payload: &[u8]) -> Result<Value> {
    to_json(&decode_message(desc, payload)?)
}

/// A message's canonical proto3 JSON value.
pub fn to_json(msg: &DynamicMessage) -> Result<Value> {
    Ok(serde_json::to_value(Json(msg))?)
}

/// A message as its canonical proto3 JSON, serialized straight into the
/// output (no intermediate value: the printers' hot path).
#[derive(Clone, Copy)]
pub struct Json<'a>(pub &'a DynamicMessage);

impl serde::Serialize for Json<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize_with_options(s, &SerializeOptions::new())
    }
}

/// One field of `msg` in the canonical JSON mapping: a repeated field as its
/// array, a map as its object, a Timestamp as its RFC 3339 string; an unset
/// or empty one as `[]`, `{}` or `null`.
pub fn field_json(msg: &DynamicMessage, field: &FieldDescriptor) -> Result<Value> {
    let mut one = DynamicMessage::new(msg.descriptor());
    one.set_field(field, msg.get_field(field).into_owned());
    let found = to_json(&one)?.get(field.json_name()).cloned();
    Ok(found.unwrap_or_else(|| match field {
        f if f.is_map() => Value::Object(Default::default()),
        f if f.is_list() => Value::Array(Vec::new()),
        _ => Value::Null,
    }))
}

/// Decodes `payload` as `desc`.
pub fn decode_message(desc: &MessageDescriptor, payload: &[u8]) -> Result<DynamicMessage> {
    if payload.is_empty() {
        bail!(
            "empty payload (a cleared retained message?), not a {}",
            desc.full_name()
        );
    }
    let msg = DynamicMessage::decode(desc.clone(), payload)
        .map_err(|e| anyhow::anyhow!("not a {}: {e}", desc.full_name()))?;
    Ok(msg)
}

/// Encodes one JSON object (`text`) as `desc`. Errors name the field path
/// and what was expected there.
pub fn encode_json(desc: &MessageDescriptor, text: &str) -> Result<Vec<u8>> {
    Ok(message_from_json(desc, text)?.encode_to_vec())
}

/// Parses one JSON object as `desc`, strictly: unknown fields are errors.
pub fn message_from_json(desc: &MessageDescriptor, text: &str) -> Result<DynamicMessage> {
    let mut de = serde_json::Deserializer::from_str(text);
    let mut track = serde_path_to_error::Track::new();
    let parsed = DynamicMessage::deserialize_with_options(
        desc.clone(),
        serde_path_to_error::Deserializer::new(&mut de, &mut track),
        &DeserializeOptions::new().deny_unknown_fields(true),
    );
    let msg = parsed.and_then(|m| de.end().map(|()| m)).map_err(|e| {
        let path = track.path().to_string();
        let at = if path.is_empty() || path == "." {
            String::new()
        } else {
            format!(" at field {path}")
        };
        anyhow::anyhow!("JSON does not fit {}{at}: {e}", desc.full_name())
    })?;
    Ok(msg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::tests::plant_schema;

    #[test]
    fn json_round_trips_through_the_wire_format() {
        let (schema, _dir) = plant_schema();
        let desc = schema.rules[0].message.clone();
        let json = r#"{"site":"osaka","sequence":"7","sampledAt":"2026-12-02T01:02:03.500Z",
            "env":{"temperatureC":21.5},"tags":["a","b"],"limits":{"max":9.5},
            "state":"STATE_RUNNING","error":"jam"}"#;
        let bytes = encode_json(&desc, json).unwrap();
        let back = decode(&desc, &bytes).unwrap();
        assert_eq!(back["sequence"], "7");
        assert_eq!(back["sampledAt"], "2026-12-02T01:02:03.500Z");
        assert_eq!(back["env"]["temperatureC"], 21.5);
        assert_eq!(back["tags"], serde_json::json!(["a", "b"]));
        assert_eq!(back["limits"]["max"], 9.5);
        assert_eq!(back["state"], "STATE_RUNNING");
        assert_eq!(back["error"], "jam");
    }

    #[test]
    fn json_that_does_not_fit_names_the_field() {
        let (schema, _dir) = plant_schema();
        let desc = schema.rules[0].message.clone();
        let e = encode_json(&desc, r#"{"nosuch": 1}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("nosuch"), "{e}");
        let e = encode_json(&desc, r#"{"env": {"temperatureC": "warm"}}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("env.temperatureC"), "{e}");
        let e = encode_json(&desc, r#"{"sequence": 1} x"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("trailing"), "{e}");
    }

    #[test]
    fn empty_and_garbage_payloads_are_not_messages() {
        let (schema, _dir) = plant_schema();
        let desc = schema.rules[0].message.clone();
        assert!(decode(&desc, b"")
            .unwrap_err()
            .to_string()
            .contains("empty"));
        assert!(decode(&desc, b"\xff\xff\xff").is_err());
    }
}

//! `bench --schema`: the simulated devices publish the map's telemetry type
//! (generated as `pub telemetry --schema` does) on their mapped telemetry
//! topic, and the subscribers measure latency from the message's mapped time
//! field, as the built-in bench does from `Telemetry`'s send time.
//!
//! The device is the topic's `{device}` level (the built-in bench reads it
//! from the payload), so every simulated device needs its own identity and
//! topic: with a shared identity they would all be one device. Loss and
//! duplicates are counted from the mapped seq field; without one every
//! message counts as distinct (duplicates cannot be told apart).

use anyhow::{bail, Result};

use crate::schema::generate::{seq_of, time_of, Generator};
use crate::schema::{codec, template, Labels, Role, Rule, Schema, SchemaArgs};

/// The map's telemetry topic and type, checked for what bench needs.
#[derive(Debug)]
pub struct BenchSchema {
    rule: Rule,
    /// `--label` values for the topic's other labels.
    labels: Labels,
}

/// One decoded message: (device, seq if mapped, device time in Unix ns).
pub type Reading = (String, Option<u64>, i128);

impl BenchSchema {
    /// The schema the flags name, or `None` for the built-in Telemetry.
    pub fn load(args: &SchemaArgs, labels: &[(String, String)]) -> Result<Option<Self>> {
        let src = args.source();
        if src.is_empty() {
            if !labels.is_empty() {
                bail!("--label: only with --schema (mqttkit's own topics have no labels)");
            }
            return Ok(None);
        }
        let schema = Schema::load(&src)?;
        let Some(rule) = schema.rule_of(Role::Telemetry) else {
            bail!("--schema: no [[topic]] has role = \"telemetry\"; bench publishes the map's telemetry type on its telemetry topic");
        };
        if rule.time.is_none() {
            bail!("--schema: the telemetry topic {} maps no time field, and bench measures latency from it; add time = \"FIELD\" (a google.protobuf.Timestamp, or an integer with time_unit)", rule.template);
        }
        let this = BenchSchema {
            rule: rule.clone(),
            labels: labels.iter().cloned().collect(),
        };
        // Every label but {device} must have a value: checked before connecting.
        this.topic("bench-0000")?;
        Ok(Some(this))
    }

    /// The message type, for the report.
    pub fn type_name(&self) -> &str {
        self.rule.message.full_name()
    }

    /// Where `device` publishes.
    pub fn topic(&self, device: &str) -> Result<String> {
        let mut labels = self.labels.clone();
        labels.insert(template::DEVICE.to_string(), device.to_string());
        self.rule.template.topic(&labels)
    }

    /// What the subscribers subscribe to: every device's telemetry.
    pub fn filter(&self) -> String {
        self.rule.template.filter()
    }

    /// Messages for `device`, seq 0, 1, 2, ...
    pub fn generator(&self, device: &str) -> Generator {
        Generator::new(&self.rule, device, 0)
    }

    /// The device, seq and time of a received message, or `None` when it is
    /// not one of the map's telemetry messages.
    pub fn decode(&self, topic: &[u8], payload: &[u8]) -> Option<Reading> {
        let topic = std::str::from_utf8(topic).ok()?;
        let mut labels = self.rule.template.matches(topic)?;
        let device = labels.remove(template::DEVICE)?;
        let msg = codec::decode_message(&self.rule.message, payload).ok()?;
        let time = time_of(&self.rule, &msg)?;
        Some((device, seq_of(&self.rule, &msg), time))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::tests::plant_schema;

    fn plant(labels: &[(String, String)]) -> Result<Option<BenchSchema>> {
        let (_, dir) = plant_schema();
        let args = SchemaArgs {
            schema: Some(dir.path().join("schema.toml")),
            ..Default::default()
        };
        BenchSchema::load(&args, labels)
    }

    #[test]
    fn a_generated_message_decodes_to_its_device_seq_and_time() {
        let site = [("site".to_string(), "osaka".to_string())];
        let s = plant(&site).unwrap().unwrap();
        assert_eq!(
            s.topic("bench-0001").unwrap(),
            "plant/osaka/bench-0001/metrics"
        );
        assert_eq!(s.filter(), "plant/+/+/metrics");
        let (_, payload) = s
            .generator("bench-0001")
            .next_payload(1_700_000_000_000_000_007);
        let topic = b"plant/osaka/bench-0001/metrics";
        let (device, seq, time) = s.decode(topic, &payload).unwrap();
        assert_eq!(
            (device.as_str(), seq, time),
            ("bench-0001", Some(0), 1_700_000_000_000_000_007)
        );
    }

    #[test]
    fn a_label_without_a_value_is_an_error_before_connecting() {
        let e = plant(&[]).unwrap_err().to_string();
        assert!(e.contains("no value for {site}"), "{e}");
    }
}

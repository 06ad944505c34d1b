//! `sub telemetry --schema`: the user's telemetry type on the user's topics.
//! Each message is decoded by the topic map and printed as one JSON object
//! (topic, device, labels, seq, received, message) or as its compact JSON;
//! with a mapped seq, `--count` counts distinct (device, seq), as for
//! mqttkit's own telemetry. What does not decode goes to the dead-letter
//! file, like any poison message.

use std::collections::{HashMap, HashSet};
use std::io::Write;

use crate::mqtt::Message;
use anyhow::Result;
use serde::Serialize;

use super::subscribe::Print;
use super::Out;
use crate::pipeline::quarantine::{payload_problem, DeadLetterFile, Rejected};
use crate::pipeline::Handled;
use crate::schema::generate::seq_of;
use crate::schema::{codec, template, Labels, Schema};

pub(crate) struct SchemaPrinter {
    pub schema: Schema,
    pub json: bool,
    /// With --count: (device, seq) already printed.
    pub seen: Option<HashMap<String, HashSet<u64>>>,
    pub dead_letter: DeadLetterFile,
    pub rejects: Vec<Rejected>,
}

#[derive(Serialize)]
struct Line<'a> {
    topic: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    device: Option<&'a str>,
    labels: &'a Labels,
    #[serde(rename = "type")]
    type_name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    seq: Option<u64>,
    received: String,
    message: serde_json::Value,
}

impl SchemaPrinter {
    fn reject(&mut self, p: &Message, reason: String) -> Handled {
        let r = Rejected::new(p, reason);
        r.warn(&self.dead_letter.path().display().to_string());
        self.rejects.push(r);
        Handled::Skipped
    }

    /// Whether (device, seq) is new; always without --count or a seq.
    fn first_time(&mut self, device: Option<&str>, seq: Option<u64>) -> bool {
        match (&mut self.seen, seq) {
            (Some(seen), Some(seq)) => {
                (seen.entry(device.unwrap_or("").to_string()).or_default()).insert(seq)
            }
            _ => true,
        }
    }
}

impl Print for SchemaPrinter {
    fn commit(&mut self) -> Result<()> {
        self.dead_letter.append(&self.rejects)?;
        self.rejects.clear();
        Ok(())
    }

    fn print(&mut self, out: &mut Out, p: &Message) -> Result<Handled> {
        let Some((rule, labels)) = self.schema.rule_for(&p.topic) else {
            return Ok(self.reject(p, "no [[topic]] of the schema matches this topic".into()));
        };
        let name = rule.message.full_name().to_string();
        if let Some(problem) = payload_problem(&p.payload, &name) {
            return Ok(self.reject(p, problem));
        }
        let msg = match codec::decode_message(&rule.message, &p.payload) {
            Ok(m) => m,
            Err(e) => return Ok(self.reject(p, format!("{e:#}"))),
        };
        let seq = seq_of(rule, &msg);
        let message = codec::to_json(&msg)?;
        let device = labels.get(template::DEVICE).map(String::as_str);
        let w = out.writer();
        if self.json {
            let line = Line {
                topic: &p.topic,
                device,
                labels: &labels,
                type_name: &name,
                seq,
                received: crate::telemetry::rfc3339_nanos(crate::clock::now_unix_nano() as i128)
                    .unwrap_or_default(),
                message,
            };
            serde_json::to_writer(&mut *w, &line)?;
        } else {
            let who = crate::telemetry::Escaped(device.unwrap_or(&p.topic));
            write!(w, "{who} {message}")?;
        }
        out.end_line()?;
        let device = device.map(str::to_string);
        Ok(if self.first_time(device.as_deref(), seq) {
            Handled::Counted
        } else {
            Handled::Repeated
        })
    }
}

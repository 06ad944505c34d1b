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
    message: codec::Json<'a>,
}

/// Warns about a message that does not decode and keeps it for the
/// dead-letter file (written at the next commit).
fn reject(rejects: &mut Vec<Rejected>, file: &DeadLetterFile, p: &Message, why: String) -> Handled {
    let r = Rejected::new(p, why);
    r.warn(&file.path().display().to_string());
    rejects.push(r);
    Handled::Skipped
}

/// Whether (device, seq) is new; always without --count or a seq.
fn first_time(
    seen: &mut Option<HashMap<String, HashSet<u64>>>,
    device: Option<&str>,
    seq: Option<u64>,
) -> bool {
    let (Some(seen), Some(seq)) = (seen, seq) else {
        return true;
    };
    let device = device.unwrap_or("");
    match seen.get_mut(device) {
        Some(seqs) => seqs.insert(seq),
        None => seen.entry(device.to_string()).or_default().insert(seq),
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
            let why = "no [[topic]] of the schema matches this topic".into();
            return Ok(reject(&mut self.rejects, &self.dead_letter, p, why));
        };
        let name = rule.message.full_name();
        let decoded = match payload_problem(&p.payload, name) {
            Some(problem) => Err(problem),
            None => codec::decode_message(&rule.message, &p.payload).map_err(|e| format!("{e:#}")),
        };
        let msg = match decoded {
            Ok(m) => m,
            Err(why) => return Ok(reject(&mut self.rejects, &self.dead_letter, p, why)),
        };
        let seq = seq_of(rule, &msg);
        let message = codec::Json(&msg);
        let device = labels.get(template::DEVICE).map(String::as_str);
        let w = out.writer();
        if self.json {
            let line = Line {
                topic: &p.topic,
                device,
                labels: &labels,
                type_name: name,
                seq,
                received: crate::telemetry::rfc3339_nanos(crate::clock::now_unix_nano() as i128)
                    .unwrap_or_default(),
                message,
            };
            serde_json::to_writer(&mut *w, &line)?;
        } else {
            let who = crate::telemetry::Escaped(device.unwrap_or(&p.topic));
            write!(w, "{who} ")?;
            serde_json::to_writer(&mut *w, &message)?;
        }
        out.end_line()?;
        Ok(if first_time(&mut self.seen, device, seq) {
            Handled::Counted
        } else {
            Handled::Repeated
        })
    }
}

//! The topic map declared in the `.proto` itself, by a custom message option
//! (`proto/mqttkit/options.proto`; the design asked for in emqx/MQTTX#1997):
//!
//! ```proto
//! import "mqttkit/options.proto";
//! message Metrics {
//!   option (mqttkit.options.topic) = {
//!     filter: "plant/{site}/{device}/metrics" role: "telemetry" seq: "sequence" time: "sampled_at"
//!   };
//! }
//! ```
//!
//! Then `--proto plant.proto` needs no schema file: the messages carry their
//! topics. The options file is compiled into the binary and served to protox
//! as `mqttkit/options.proto`, so users import it without copying it. Each
//! option becomes the same entry a `[[topic]]` of a schema file would, and is
//! checked by the same code; role and time unit are strings (not enums) so
//! that a wrong one is our one-line error naming the message, not a protox
//! parse error.

use anyhow::{bail, Result};
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor, Value};

use super::{Role, TimeUnit, TopicEntry};

/// The import name of the options file.
pub const FILE: &str = "mqttkit/options.proto";
/// Its text, as shipped in proto/mqttkit/options.proto.
pub const SOURCE: &str = include_str!("../../proto/mqttkit/options.proto");
/// The extension's full name.
pub const EXTENSION: &str = "mqttkit.options.topic";

/// Serves `mqttkit/options.proto` from the binary to protox's imports.
pub(super) struct Embedded;

impl protox::file::FileResolver for Embedded {
    fn open_file(&self, name: &str) -> Result<protox::file::File, protox::Error> {
        if name == FILE {
            protox::file::File::from_source(name, SOURCE)
        } else {
            Err(protox::Error::file_not_found(name))
        }
    }
}

/// The `(mqttkit.options.topic)` entries of the messages in `pool`, in
/// declaration order, each with the place an error names; messages for
/// which `skip` is true (the schema file maps them) are left out.
pub(super) fn entries(
    pool: &DescriptorPool,
    skip: impl Fn(&str) -> bool,
) -> Result<Vec<(String, TopicEntry)>> {
    let Some(ext) = pool.get_extension_by_name(EXTENSION) else {
        // No file imports the options: nothing is declared.
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for message in pool.all_messages() {
        if skip(message.full_name()) {
            continue;
        }
        let options = message.options();
        let Value::List(topics) = &*options.get_extension(&ext) else {
            continue;
        };
        for (i, topic) in topics.iter().enumerate() {
            let place = format!(
                "{}: {}: option ({EXTENSION}) #{}",
                message.parent_file().name(),
                message.full_name(),
                i + 1
            );
            let Value::Message(m) = topic else {
                bail!("{place}: not a TopicMapping");
            };
            let entry = entry(&message, m).map_err(|e| anyhow::anyhow!("{place}: {e}"))?;
            out.push((place, entry));
        }
    }
    Ok(out)
}

/// One option as a schema-file entry.
fn entry(message: &MessageDescriptor, m: &DynamicMessage) -> Result<TopicEntry> {
    let filter = text(m, "filter");
    if filter.is_empty() {
        bail!("filter is missing; write e.g. filter: \"plant/{{site}}/{{device}}/metrics\"");
    }
    let role = match text(m, "role").as_str() {
        "" => None,
        "telemetry" => Some(Role::Telemetry),
        "command" => Some(Role::Command),
        other => bail!(
            "role: {other:?} is not a role; write role: \"telemetry\" (device -> server) or \"command\" (server -> device), or leave it out"
        ),
    };
    let time_unit = match text(m, "time_unit").as_str() {
        "" => None,
        "ns" => Some(TimeUnit::Ns),
        "us" => Some(TimeUnit::Us),
        "ms" => Some(TimeUnit::Ms),
        "s" => Some(TimeUnit::S),
        other => bail!("time_unit: {other:?} is not a unit; write \"ns\", \"us\", \"ms\" or \"s\""),
    };
    let optional = |name: &str| Some(text(m, name)).filter(|s| !s.is_empty());
    Ok(TopicEntry {
        filter,
        message: message.full_name().to_string(),
        role,
        seq: optional("seq"),
        time: optional("time"),
        time_unit,
    })
}

/// A string field of the option (empty when unset).
fn text(m: &DynamicMessage, name: &str) -> String {
    match m.get_field_by_name(name).as_deref() {
        Some(Value::String(s)) => s.clone(),
        _ => String::new(),
    }
}

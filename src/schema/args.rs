//! The schema flags every schema-aware command flattens in.

use std::path::PathBuf;

use clap::Args;

use super::SchemaSource;

#[derive(Debug, Clone, Args, Default)]
pub struct SchemaArgs {
    /// Schema file: .proto files and the topic map ([[topic]] filter, message,
    /// role, seq, time); see README "Your own schema".
    #[arg(long, value_name = "FILE", env = "MQTTKIT_SCHEMA")]
    pub schema: Option<PathBuf>,
    /// A .proto file to load (repeatable; compiled in-process, no protoc).
    #[arg(long, value_name = "FILE")]
    pub proto: Vec<PathBuf>,
    /// Import path for --proto, like protoc -I (repeatable; default: each file's directory).
    #[arg(long, value_name = "DIR")]
    pub proto_path: Vec<PathBuf>,
    /// A compiled FileDescriptorSet (protoc --include_imports --descriptor_set_out=FILE, buf build -o FILE).
    #[arg(long, value_name = "FILE")]
    pub descriptor_set: Vec<PathBuf>,
    /// The message type (package.Name) of every topic this command uses.
    #[arg(long = "message", value_name = "TYPE")]
    pub message_type: Option<String>,
}

/// `NAME=VALUE` of `--label`.
pub fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() && super::template::is_level_value(v) => {
            Ok((k.to_string(), v.to_string()))
        }
        Some((k, _)) if !k.is_empty() => Err(format!(
            "{s}: the value must be one topic level (not empty, no /, + or #)"
        )),
        _ => Err(format!("{s}: write NAME=VALUE, e.g. site=osaka")),
    }
}

impl SchemaArgs {
    pub fn source(&self) -> SchemaSource {
        SchemaSource {
            schema: self.schema.clone(),
            proto: self.proto.clone(),
            proto_path: self.proto_path.clone(),
            descriptor_set: self.descriptor_set.clone(),
            message: self.message_type.clone(),
        }
    }
}

//! Messages generated from `proto/mqttkit.proto` by prost-build (see build.rs).

#[allow(clippy::all, missing_docs)]
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/mqttkit.v1.rs"));
}

pub use v1::{Command, CommandReply, Telemetry};

/// Full protobuf names of the built-in messages (content types, logs).
pub const TELEMETRY_TYPE: &str = "mqttkit.v1.Telemetry";
pub const COMMAND_TYPE: &str = "mqttkit.v1.Command";
pub const COMMAND_REPLY_TYPE: &str = "mqttkit.v1.CommandReply";

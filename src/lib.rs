//! mqttkit: certificates, a Mosquitto broker, AWS IoT things and protobuf MQTT
//! flows from one binary. `main.rs` only parses arguments and reports errors;
//! each subcommand family lives in its own module here.

pub mod cli;
pub mod fsutil;
pub mod mqtt;
pub mod output;
pub mod pki;
pub mod proto;

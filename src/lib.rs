//! mqttkit: certificates, a Mosquitto broker, AWS IoT things and protobuf MQTT
//! flows from one binary. `main.rs` only parses arguments and reports errors;
//! each subcommand family lives in its own module here.

pub mod aws;
pub mod bench;
pub mod broker;
pub mod cli;
pub mod clock;
pub mod doctor;
pub mod flows;
pub mod fsutil;
pub mod identity;
pub mod iot;
pub mod mqtt;
pub mod output;
pub mod pipeline;
pub mod pki;
pub mod proto;
pub mod quickstart;
pub mod schema;
pub mod sink;
pub mod telemetry;
pub mod units;

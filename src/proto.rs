//! Messages generated from `proto/mqttkit.proto` by prost-build (see build.rs).

#[allow(clippy::all, missing_docs)]
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/mqttkit.v1.rs"));
}

pub use v1::{Command, Telemetry};

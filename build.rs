//! Compiles `proto/*.proto` with protox (pure Rust), so a fresh machine builds
//! with cargo alone: no system `protoc`.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/mqttkit.proto"];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let descriptors = protox::compile(protos, ["proto"])?;
    prost_build::Config::new()
        .btree_map(["."])
        .compile_fds(descriptors)?;
    Ok(())
}

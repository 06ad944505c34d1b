//! Compiles `proto/*.proto` with protox (pure Rust), so a fresh machine builds
//! with cargo alone: no system `protoc`. Compiles the mosquitto plugin that
//! binds client ids to identities (src/broker/plugin/mqttkit_bind.c) into a
//! shared library the binary embeds: the C compiler aws-lc-sys needs already,
//! found by the `cc` crate; no mosquitto or OpenSSL headers (the plugin
//! declares what it calls) and no libc (the one file loads into Debian's
//! glibc mosquitto and the Alpine image's musl one).
use std::path::{Path, PathBuf};

const PLUGIN_SRC: &str = "src/broker/plugin/mqttkit_bind.c";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/mqttkit.proto"];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let descriptors = protox::compile(protos, ["proto"])?;
    prost_build::Config::new()
        .btree_map(["."])
        .compile_fds(descriptors)?;
    build_plugin(&PathBuf::from(std::env::var("OUT_DIR")?).join("mqttkit_bind.so"))
}

/// `cc -shared` on the plugin source, with the target's compiler and flags.
fn build_plugin(out: &Path) -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed={PLUGIN_SRC}");
    let compiler = cc::Build::new()
        .pic(true)
        .opt_level(2)
        .warnings(true)
        .extra_warnings(true)
        .try_get_compiler()?;
    let mut cmd = compiler.to_command();
    // No libc: nothing it may call (stack protector, loops made into memcpy).
    cmd.args([
        "-std=c99",
        "-ffreestanding",
        "-fno-stack-protector",
        "-nostdlib",
    ]);
    if compiler.is_like_gnu() {
        cmd.arg("-fno-tree-loop-distribute-patterns");
    }
    if std::env::var("CARGO_CFG_TARGET_VENDOR").as_deref() == Ok("apple") {
        // A Mach-O bundle whose mosquitto and libcrypto symbols resolve at load.
        cmd.args(["-bundle", "-undefined", "dynamic_lookup"]);
    } else {
        // Both hash tables: glibc and musl's loaders each read one; -s: no symbols to ship.
        cmd.args(["-shared", "-Wl,--hash-style=both", "-s"]);
    }
    cmd.arg("-o").arg(out).arg(PLUGIN_SRC);
    let status = cmd
        .status()
        .map_err(|e| format!("running the C compiler for {PLUGIN_SRC} ({cmd:?}): {e}"))?;
    if !status.success() {
        return Err(format!("compiling {PLUGIN_SRC} failed ({status}): {cmd:?}").into());
    }
    Ok(())
}

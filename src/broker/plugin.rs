//! The mosquitto plugin that binds client ids to identities (the C source and
//! the rule: plugin/mqttkit_bind.c; README "Client ids and sessions").
//! Mosquitto 2.0 lets any identity connect with any client id, so one
//! device's certificate could take over (with a clean session: destroy)
//! another device's or the sink's session; mosquitto has no setting for it,
//! and on a `use_identity_as_username` listener it calls no plugin's
//! authentication. build.rs compiles the plugin, the binary carries it, and
//! `broker up` writes it next to mosquitto.conf, whose `plugin` line loads it
//! natively and in the container (the config directory is mounted there).

use anyhow::Result;

/// The plugin's file name in `OUT/mosquitto/` (the config says `./` + this:
/// a bare name would make mosquitto's dlopen search the library path).
pub const FILE: &str = "mqttkit_bind.so";

/// The compiled plugin (no libc: it loads into glibc and musl mosquittos).
pub const LIBRARY: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/mqttkit_bind.so"));

/// Lines of mosquitto's log that mean a plugin could not be loaded or
/// initialised (src/security.c, src/plugin.c of mosquitto 2.0).
const LOAD_ERRORS: &[&str] = &[
    "Error: Unable to load auth plugin",
    "Error: Unable to load plugin function",
    "Error: Unsupported auth plugin version",
    "Error: Plugin returned",
    "mqttkit_bind: bad option",
];

/// Where a broker that could not load the plugin said why, from its log's
/// last lines: mosquitto's error and the loader's ("Load error: ...").
pub fn load_failure(log_tail: &str) -> Option<String> {
    // Only the last start counts (the log file and `docker logs` keep earlier ones).
    let all: Vec<&str> = log_tail.lines().collect();
    let start = all.iter().rposition(|l| l.contains("mosquitto version"));
    let lines = &all[start.unwrap_or(0)..];
    let at = lines
        .iter()
        .position(|l| LOAD_ERRORS.iter().any(|e| l.contains(e)))?;
    let mut why = strip_time(lines[at]).to_string();
    if let Some(load) = lines.get(at + 1).filter(|l| l.contains("Load error: ")) {
        why.push_str(" (");
        why.push_str(strip_time(load).trim_start_matches("Load error: "));
        why.push(')');
    }
    Some(why)
}

/// The one-line error for `broker up` when the plugin did not load.
pub fn load_error(why: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "mosquitto could not load the client-id binding plugin {FILE}: {why}; it needs mosquitto 2.0 or later (plugin API v5) on this machine's architecture; upgrade mosquitto (or use another --image), or pass --allow-any-client-id to run without the binding (any identity can then take over another's session)"
    )
}

/// mosquitto's log lines start with `TIME: ` (log_timestamp_format).
fn strip_time(line: &str) -> &str {
    match line.split_once(": ") {
        Some((time, rest)) if !time.contains(' ') => rest,
        _ => line,
    }
}

/// The plugin's `plugin_opt_` lines' values: who a client is (`cert`: its
/// certificate's CN, `username`: its MQTT user name) and the server
/// identities, which may use any client id.
pub fn options(identity_from_cert: bool, servers: &[String]) -> Result<(String, String)> {
    if let Some(s) = servers.iter().find(|s| s.contains(',')) {
        anyhow::bail!("--server-identity '{s}': must not contain ','");
    }
    let identity = if identity_from_cert {
        "cert"
    } else {
        "username"
    };
    Ok((identity.to_string(), servers.join(",")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_plugin_is_a_shared_library_without_libc() {
        assert!(LIBRARY.len() > 1000);
        if cfg!(target_os = "linux") {
            assert_eq!(&LIBRARY[..4], b"\x7fELF");
            let needed = LIBRARY.windows(9).any(|w| w == b"libc.so.6");
            assert!(
                !needed,
                "the plugin links libc; it would not load into a musl mosquitto"
            );
        }
    }

    #[test]
    fn load_failures_are_found_in_the_log() {
        let log = "2026-12-02T08:00:00: Loading plugin: ./mqttkit_bind.so\n2026-12-02T08:00:00: Error: Unable to load auth plugin \"./mqttkit_bind.so\".\n2026-12-02T08:00:00: Load error: ./mqttkit_bind.so: wrong ELF class: ELFCLASS64\n";
        assert_eq!(
            load_failure(log).unwrap(),
            "Error: Unable to load auth plugin \"./mqttkit_bind.so\". (./mqttkit_bind.so: wrong ELF class: ELFCLASS64)"
        );
        assert_eq!(
            load_failure("1796197517: Opening ipv4 listen socket on port 18993.\n"),
            None
        );
        let restarted = format!("{log}2026-12-02T08:01:00: mosquitto version 2.0.11 starting\n2026-12-02T08:01:00: Error: Address already in use\n");
        assert_eq!(load_failure(&restarted), None);
        assert_eq!(
            load_failure("1796197517: Error: Plugin returned 3 when initialising.").unwrap(),
            "Error: Plugin returned 3 when initialising."
        );
    }
}

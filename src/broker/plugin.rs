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

/// What one line of mosquitto's log says, as far as loading the plugin goes.
/// mosquitto reports a plugin that cannot load only in its log (its exit
/// status is shared with other start-up errors), so its lines are read
/// into these variants once, here, and callers match on them.
#[derive(Debug, Clone, PartialEq, Eq)]
enum LogLine<'a> {
    /// `mosquitto version ... starting`: a (re)start; earlier lines are old.
    Start,
    /// The plugin could not be loaded or initialised (src/security.c,
    /// src/plugin.c of mosquitto 2.0, or the plugin's own option check).
    PluginFailed(&'a str),
    /// The dynamic loader's reason, on the line after a failed load.
    LoaderReason(&'a str),
    Other,
}

/// mosquitto's messages for a plugin it could not load or initialise.
const LOAD_ERRORS: &[&str] = &[
    "Error: Unable to load auth plugin",
    "Error: Unable to load plugin function",
    "Error: Unsupported auth plugin version",
    "Error: Plugin returned",
    "mqttkit_bind: bad option",
];

impl<'a> LogLine<'a> {
    fn parse(line: &'a str) -> Self {
        let msg = strip_time(line);
        if msg.starts_with("mosquitto version ") {
            LogLine::Start
        } else if LOAD_ERRORS.iter().any(|e| msg.starts_with(e)) {
            LogLine::PluginFailed(msg)
        } else if let Some(reason) = msg.strip_prefix("Load error: ") {
            LogLine::LoaderReason(reason)
        } else {
            LogLine::Other
        }
    }
}

/// Where a broker that could not load the plugin said why, from its log's
/// last lines: mosquitto's error and the loader's ("Load error: ...").
pub fn load_failure(log_tail: &str) -> Option<String> {
    let lines: Vec<LogLine> = log_tail.lines().map(LogLine::parse).collect();
    // Only the last start counts (the log file and `docker logs` keep earlier ones).
    let start = lines
        .iter()
        .rposition(|l| *l == LogLine::Start)
        .unwrap_or(0);
    let lines = &lines[start..];
    let (at, failed) = lines.iter().enumerate().find_map(|(i, l)| match l {
        LogLine::PluginFailed(msg) => Some((i, *msg)),
        _ => None,
    })?;
    let mut why = failed.to_string();
    if let Some(LogLine::LoaderReason(reason)) = lines.get(at + 1) {
        why.push_str(&format!(" ({reason})"));
    }
    Some(why)
}

/// The most read rules of each kind, and bytes per rule, the plugin holds
/// (READS_MAX and FILTER_MAX_LEN in plugin/mqttkit_bind.c).
const READS_MAX: usize = 64;
const FILTER_MAX_LEN: usize = 1024;

/// Refuses read rules the plugin could not hold, before anything is
/// written (the plugin would fail to start with "bad option").
pub fn check_reads(device_read: &[String], server_read: &[String]) -> Result<()> {
    for (what, reads) in [("device", device_read), ("server", server_read)] {
        if reads.len() > READS_MAX {
            anyhow::bail!(
                "the ACL has {} {what} read topics; the client-id plugin holds at most {READS_MAX}; map fewer topics in the schema, or pass --allow-any-client-id (no plugin)",
                reads.len()
            );
        }
        if let Some(t) = reads
            .iter()
            .find(|t| t.len() > FILTER_MAX_LEN || t.is_empty())
        {
            anyhow::bail!(
                "ACL topic '{t}' ({} bytes): the client-id plugin holds topics of 1 to {FILTER_MAX_LEN} bytes; shorten the schema's filter, or pass --allow-any-client-id (no plugin)",
                t.len()
            );
        }
    }
    Ok(())
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
    fn read_rules_beyond_what_the_plugin_holds_are_refused() {
        let one = vec!["devices/%u/commands".to_string()];
        assert!(check_reads(&one, &one).is_ok());
        let many = vec!["a".to_string(); READS_MAX + 1];
        let e = check_reads(&one, &many).unwrap_err().to_string();
        assert!(e.contains("65 server read topics"), "{e}");
        let long = vec!["x".repeat(FILTER_MAX_LEN + 1)];
        let e = check_reads(&long, &one).unwrap_err().to_string();
        assert!(e.contains("1025 bytes"), "{e}");
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

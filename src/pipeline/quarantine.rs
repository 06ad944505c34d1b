//! Poison messages: what every consumer does with a message it can never
//! take (empty, larger than any reading, undecodable, a value no store can
//! hold). Such a message is acknowledged like any other, so it cannot block
//! a session, and kept in a dead-letter place instead of being dropped: a
//! [`Rejected`] record (received time, topic, device, size, reason and the
//! payload, or for huge ones a bounded prefix and the SHA-256 of the whole),
//! warned about on stderr, and written by the handler to a `rejected` table
//! or to a [`DeadLetterFile`] before the commit that acknowledges it.
//!
//! Here, not in `sink`: `sub` (printing) and the sink quarantine the same way.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::mqtt::Message;
use anyhow::{Context, Result};
use base64::Engine;
use serde::Serialize;
use sha2::{Digest, Sha256};

/// Payloads up to this size are kept whole in the dead-letter place.
pub const KEEP_WHOLE: usize = 64 * 1024;
/// Of a larger payload, only this prefix is kept (plus its SHA-256).
pub const KEEP_PREFIX: usize = 1024;
/// No Telemetry or Command is anywhere near this size (a full reading is
/// under 200 bytes); a larger payload is refused before decoding.
pub const MAX_MESSAGE: usize = 64 * 1024;
/// The file a [`DeadLetterFile`] appends to, in its directory.
pub const FILE_NAME: &str = "rejected.jsonl";

/// Why a payload is not a message, before decoding it: empty (what clearing
/// a retained message sends, never an all-zero reading) or too large.
pub fn payload_problem(payload: &[u8], what: &str) -> Option<String> {
    if payload.is_empty() {
        return Some(format!("empty payload, not a {what}"));
    }
    if payload.len() > MAX_MESSAGE {
        return Some(format!(
            "{} bytes is larger than any {what} (at most {MAX_MESSAGE} bytes)",
            payload.len()
        ));
    }
    None
}

/// One quarantined message.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rejected {
    /// When it was received, ns since the Unix epoch.
    pub received_unix_nano: i64,
    pub topic: String,
    /// The device its topic names (`devices/ID/...`), if any.
    pub device_id: Option<String>,
    /// The payload's full size in bytes.
    pub size: usize,
    pub reason: String,
    /// The payload, or its first [`KEEP_PREFIX`] bytes when `truncated`.
    #[serde(rename = "payload_base64", serialize_with = "base64_bytes")]
    pub payload: Vec<u8>,
    pub truncated: bool,
    /// SHA-256 of the whole payload, hex.
    pub sha256: String,
}

fn base64_bytes<S: serde::Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(b))
}

impl Rejected {
    pub fn new(p: &Message, reason: impl Into<String>) -> Self {
        let payload = p.payload.as_ref();
        let truncated = payload.len() > KEEP_WHOLE;
        let kept = if truncated {
            &payload[..KEEP_PREFIX]
        } else {
            payload
        };
        let topic = p.topic.clone();
        Rejected {
            received_unix_nano: i64::try_from(crate::clock::now_unix_nano()).unwrap_or(i64::MAX),
            device_id: crate::mqtt::device_of_topic(&topic).map(str::to_string),
            topic,
            size: payload.len(),
            reason: reason.into(),
            payload: kept.to_vec(),
            truncated,
            sha256: hex::encode(Sha256::digest(payload)),
        }
    }

    /// The warning on stderr: topic, size, reason, and where it went.
    pub fn warn(&self, place: &str) {
        crate::note!(
            "warning: {}: {}-byte message rejected: {}; acknowledged and kept in {place}",
            Escaped(&self.topic),
            self.size,
            Escaped(&self.reason)
        );
    }
}

/// Control characters escaped (a device chose the topic and caused the reason).
struct Escaped<'a>(&'a str);

impl std::fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0.escape_debug())
    }
}

/// A JSON-lines dead-letter file, `DIR/rejected.jsonl`, appended to; one
/// [`Rejected`] per line. Created 0600 (payloads may be private).
pub struct DeadLetterFile {
    path: PathBuf,
    file: Option<File>,
}

impl DeadLetterFile {
    /// Nothing is created until the first rejection.
    pub fn new(dir: &Path) -> Self {
        DeadLetterFile {
            path: dir.join(FILE_NAME),
            file: None,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `rejected` and syncs: durable before they are acknowledged.
    pub fn append(&mut self, rejected: &[Rejected]) -> Result<()> {
        if rejected.is_empty() {
            return Ok(());
        }
        let what = || format!("--dead-letter: writing {}", self.path.display());
        let mut buf = Vec::new();
        for r in rejected {
            serde_json::to_writer(&mut buf, r)?;
            buf.push(b'\n');
        }
        if self.file.is_none() {
            self.file = Some(self.open().with_context(what)?);
        }
        let file = self.file.as_mut().expect("opened above");
        file.write_all(&buf).with_context(what)?;
        file.sync_data().with_context(what)
    }

    fn open(&self) -> std::io::Result<File> {
        use std::os::unix::fs::OpenOptionsExt;
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttc::QoS;

    #[test]
    fn empty_and_huge_payloads_are_named() {
        assert!(payload_problem(b"", "Telemetry")
            .unwrap()
            .starts_with("empty payload"));
        assert!(payload_problem(&[1; MAX_MESSAGE + 1], "Telemetry")
            .unwrap()
            .contains("larger than any Telemetry"));
        assert_eq!(payload_problem(&[8, 1], "Telemetry"), None);
    }

    #[test]
    fn huge_payloads_keep_a_prefix_and_the_hash_of_the_whole() {
        let big = vec![7u8; KEEP_WHOLE + 1];
        let p = Message::new("devices/d1/telemetry", QoS::AtLeastOnce, big.clone());
        let r = Rejected::new(&p, "too large");
        assert_eq!(
            (r.size, r.truncated, r.payload.len()),
            (big.len(), true, KEEP_PREFIX)
        );
        assert_eq!(r.device_id.as_deref(), Some("d1"));
        assert_eq!(r.sha256, hex::encode(Sha256::digest(&big)));
        let small = Rejected::new(&Message::new("x", QoS::AtMostOnce, vec![1, 2]), "bad");
        assert_eq!(
            (small.payload, small.truncated, small.device_id),
            (vec![1, 2], false, None)
        );
    }

    #[test]
    fn the_file_gets_one_json_line_per_rejection() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = DeadLetterFile::new(&dir.path().join("dl"));
        let p = Message::new("devices/d1/telemetry", QoS::AtLeastOnce, vec![0xff]);
        f.append(&[Rejected::new(&p, "garbage"), Rejected::new(&p, "again")])
            .unwrap();
        let text = std::fs::read_to_string(f.path()).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["payload_base64"], "/w==");
        assert_eq!(lines[1]["reason"], "again");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(f.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}

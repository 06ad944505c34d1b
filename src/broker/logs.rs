//! `broker logs`: the mosquitto log without its autosave notices, as text or
//! JSON lines. With `persistence true` mosquitto logs "Saving in-memory
//! database" every `autosave_interval` at level information, the same level
//! as its start-up and shutdown lines, so the config cannot drop one without
//! the others; they are left out here instead, and `-n` counts only the
//! lines kept. A mosquitto that words the notice differently only brings the
//! noise back. With the Docker runtime the lines come from `docker logs`.

use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use serde::Serialize;

use super::docker;

/// The message mosquitto writes on every autosave (src/persist_write.c).
const AUTOSAVE_NOTICE: &str = "Saving in-memory database to ";

/// `log_timestamp_format` in templates/mosquitto.conf (local time, no offset).
const TIMESTAMP: &[time::format_description::FormatItem<'static>] =
    time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]");

/// One log line split into mosquitto's timestamp (when it has one) and text.
#[derive(Debug, PartialEq, Serialize)]
pub struct LogLine<'a> {
    /// As mosquitto wrote it: local time, `YYYY-MM-DDTHH:MM:SS`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time: Option<&'a str>,
    pub line: &'a str,
}

impl<'a> LogLine<'a> {
    pub fn parse(raw: &'a str) -> Self {
        if let Some((ts, rest)) = raw.split_once(": ") {
            if time::PrimitiveDateTime::parse(ts, TIMESTAMP).is_ok() {
                return LogLine {
                    time: Some(ts),
                    line: rest,
                };
            }
        }
        LogLine {
            time: None,
            line: raw,
        }
    }

    fn is_autosave(&self) -> bool {
        self.line.starts_with(AUTOSAVE_NOTICE)
    }
}

/// Writes kept lines as text (unchanged) or as one JSON object each.
struct Printer {
    json: bool,
}

impl Printer {
    fn print(&self, out: &mut impl Write, raw: &str) -> Result<()> {
        let line = LogLine::parse(raw);
        if self.json {
            serde_json::to_writer(&mut *out, &line)?;
            out.write_all(b"\n")?;
        } else {
            writeln!(out, "{raw}")?;
        }
        Ok(())
    }
}

/// The lines of `text` that `broker logs` shows, autosave notices left out.
pub fn kept_lines(text: &str) -> impl Iterator<Item = &str> {
    text.lines().filter(|l| !LogLine::parse(l).is_autosave())
}

pub async fn print_log(log: &Path, tail: Option<usize>, follow: bool, json: bool) -> Result<()> {
    let mut file =
        std::fs::File::open(log).with_context(|| format!("opening {}", log.display()))?;
    let mut text = String::new();
    BufReader::new(&mut file).read_to_string(&mut text)?;
    let printer = Printer { json };
    print_kept(&text, tail, &printer)?;
    if follow {
        follow_log(log, file, &printer).await?;
    }
    Ok(())
}

/// Prints the kept lines of `text`, only the last `tail` of them when given.
fn print_kept(text: &str, tail: Option<usize>, printer: &Printer) -> Result<()> {
    let kept: Vec<&str> = kept_lines(text).collect();
    let start = tail.map_or(0, |n| kept.len().saturating_sub(n));
    let mut out = std::io::stdout().lock();
    for l in &kept[start..] {
        printer.print(&mut out, l)?;
    }
    out.flush()?;
    Ok(())
}

/// Prints lines appended to `log` until SIGINT/SIGTERM; a partial last line waits
/// for its newline.
async fn follow_log(log: &Path, mut file: std::fs::File, printer: &Printer) -> Result<()> {
    let mut pos = file.seek(SeekFrom::End(0))?;
    let mut pending = Vec::new();
    let mut shutdown = crate::pipeline::Shutdown::install();
    loop {
        tokio::select! {
            _ = shutdown.wait() => return Ok(()),
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
        let len = std::fs::metadata(log)?.len();
        if len < pos {
            pos = 0; // truncated or rotated
            pending.clear();
        }
        if len > pos {
            file.seek(SeekFrom::Start(pos))?;
            pos += file.read_to_end(&mut pending)? as u64;
            let complete = pending
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(0, |i| i + 1);
            let mut out = std::io::stdout().lock();
            for l in pending[..complete].lines() {
                let l = l?;
                if !LogLine::parse(&l).is_autosave() {
                    printer.print(&mut out, &l)?;
                }
            }
            out.flush()?;
            pending.drain(..complete);
        }
    }
}

/// `broker logs` of the Docker runtime: the container's log (`docker logs`),
/// filtered, tailed and printed like the native log file.
pub async fn print_container_log(tail: Option<usize>, follow: bool, json: bool) -> Result<()> {
    let lines = docker::read_logs(&[])?;
    let last = lines.iter().filter_map(|l| l.time).max();
    let text: String = lines.iter().map(|l| format!("{}\n", l.line)).collect();
    let printer = Printer { json };
    print_kept(&text, tail, &printer)?;
    if follow {
        follow_container(last, &printer).await?;
    }
    Ok(())
}

/// Prints the container's new lines (`docker logs -f` from the last one
/// shown) until SIGINT/SIGTERM or the container's end.
async fn follow_container(after: Option<time::OffsetDateTime>, printer: &Printer) -> Result<()> {
    let since = after
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| "0".into());
    let (mut child, mut rx) = docker::follow_logs(&["--since", &since])?;
    let mut shutdown = crate::pipeline::Shutdown::install();
    loop {
        let l = tokio::select! {
            _ = shutdown.wait() => break,
            l = rx.recv() => match l { Some(l) => l, None => break },
        };
        // --since is inclusive: the last line already shown comes again.
        if after.is_some_and(|a| l.time.is_some_and(|t| t <= a)) {
            continue;
        }
        if !LogLine::parse(&l.line).is_autosave() {
            let mut out = std::io::stdout().lock();
            printer.print(&mut out, &l.line)?;
            out.flush()?;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "2026-12-01T22:09:54: mosquitto version 2.0.11 running\n\
        2026-12-01T22:10:05: Saving in-memory database to data//mosquitto.db.\n\
        2026-12-01T22:10:06: Client device-001 disconnected.\n\
        1764627000: Error: a line with another timestamp format\n";

    #[test]
    fn autosave_notices_are_left_out() {
        let kept: Vec<&str> = kept_lines(LOG).collect();
        assert_eq!(kept.len(), 3);
        assert!(kept.iter().all(|l| !l.contains("Saving")));
    }

    #[test]
    fn lines_split_into_time_and_text() {
        assert_eq!(
            LogLine::parse("2026-12-01T22:10:06: Client device-001 disconnected."),
            LogLine {
                time: Some("2026-12-01T22:10:06"),
                line: "Client device-001 disconnected."
            }
        );
        let other = "1764627000: Error: x";
        assert_eq!(
            LogLine::parse(other),
            LogLine {
                time: None,
                line: other
            }
        );
    }
}

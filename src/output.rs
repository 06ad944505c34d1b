//! Where output goes: data on stdout, logs and progress on stderr.

use std::io::{IsTerminal, Write};

use anyhow::Result;
use serde::Serialize;

/// Prints `value` as one line of JSON on stdout.
pub fn print_json<T: Serialize + ?Sized>(value: &T) -> Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, value)?;
    out.write_all(b"\n")?;
    out.flush()?;
    Ok(())
}

pub fn print_stdout(s: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(s.as_bytes())?;
    out.flush()?;
    Ok(())
}

/// Progress bars, spinners and prompts only when a person is watching.
pub fn stderr_is_tty() -> bool {
    std::io::stderr().is_terminal()
}

pub fn stdin_is_tty() -> bool {
    std::io::stdin().is_terminal()
}

/// A spinner on stderr when it is a terminal; hidden otherwise.
pub fn spinner(msg: impl Into<std::borrow::Cow<'static, str>>) -> indicatif::ProgressBar {
    if !stderr_is_tty() {
        return indicatif::ProgressBar::hidden();
    }
    let pb = indicatif::ProgressBar::new_spinner();
    pb.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
            .expect("valid template"),
    );
    pb.enable_steady_tick(std::time::Duration::from_millis(100));
    pb.set_message(msg);
    pb
}

/// A status line on stderr (not data).
#[macro_export]
macro_rules! note {
    ($($arg:tt)*) => {{
        eprintln!($($arg)*);
    }};
}

/// A plain-text table (no borders, no colour: it is data on stdout) whose
/// columns widen to their longest cell, so a long device id never shifts
/// the columns after it. `right` marks the numeric columns.
pub fn table(header: &[&str], right: &[bool], rows: Vec<Vec<String>>) -> String {
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::NOTHING)
        .set_content_arrangement(comfy_table::ContentArrangement::Disabled)
        .set_header(header.to_vec());
    for row in rows {
        t.add_row(row);
    }
    for (i, &r) in right.iter().enumerate() {
        if let Some(c) = t.column_mut(i) {
            c.set_padding((0, 2));
            if r {
                c.set_cell_alignment(comfy_table::CellAlignment::Right);
            }
        }
    }
    let mut s: String = t.lines().map(|l| l.trim_end().to_string() + "\n").collect();
    if s.is_empty() {
        s.push('\n');
    }
    s
}

#[cfg(test)]
#[test]
fn table_columns_follow_the_longest_cell() {
    let s = table(
        &["DEVICE", "ROWS"],
        &[false, true],
        vec![
            vec![
                "a-very-long-device-id-of-forty-characters".into(),
                "1".into(),
            ],
            vec!["d".into(), "1000".into()],
        ],
    );
    let lines: Vec<&str> = s.lines().collect();
    assert_eq!(lines.len(), 3, "{s}");
    // The ROWS column ends at the same place on every line.
    assert!(lines.iter().all(|l| l.len() == lines[0].len()), "{s}");
    assert!(!s.contains('\u{1b}'));
}

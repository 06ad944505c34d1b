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

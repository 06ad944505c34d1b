//! The PostgreSQL password from where libpq users keep it, so it need not be
//! in the `--sink` URL (argv, visible in `ps`): `PGPASSWORD`, else the
//! password file (`?passfile=PATH`, `PGPASSFILE`, or `~/.pgpass`), in libpq's
//! format `host:port:database:user:password` with `*` wildcards and `\:`
//! escapes. As libpq does, a password file that group or others can read is
//! ignored with a warning. The password is never printed.

use std::path::{Path, PathBuf};

/// What a password file line is matched against.
#[derive(Debug, Clone, PartialEq)]
pub struct Target<'a> {
    pub host: &'a str,
    pub port: u16,
    pub database: &'a str,
    pub user: &'a str,
}

/// The password for `target`: `PGPASSWORD`, else the first matching line of
/// the password file.
pub fn lookup(target: &Target<'_>, passfile: Option<&Path>) -> Option<String> {
    if let Some(p) = std::env::var("PGPASSWORD").ok().filter(|p| !p.is_empty()) {
        return Some(p);
    }
    let path = passfile.map(Path::to_path_buf).or_else(default_file)?;
    let text = readable_file(&path)?;
    find(&text, target)
}

fn default_file() -> Option<PathBuf> {
    if let Some(f) = std::env::var_os("PGPASSFILE") {
        return Some(PathBuf::from(f));
    }
    std::env::var_os("HOME").map(|h| Path::new(&h).join(".pgpass"))
}

/// The file's text, unless it is missing or readable by others.
fn readable_file(path: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).ok()?;
    if meta.permissions().mode() & 0o077 != 0 {
        crate::note!(
            "warning: password file {} is readable by group or others; ignored (chmod 0600 it)",
            path.display()
        );
        return None;
    }
    std::fs::read_to_string(path).ok()
}

/// The first line of `text` matching `target`.
pub fn find(text: &str, target: &Target<'_>) -> Option<String> {
    let port = target.port.to_string();
    let wanted = [target.host, port.as_str(), target.database, target.user];
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .map(fields)
        .filter(|f| f.len() == 5)
        .find(|f| (f.iter().zip(wanted)).all(|(have, want)| have == "*" || have == want))
        .map(|mut f| f.remove(4))
}

/// A line's fields: split at `:` not escaped by `\`.
fn fields(line: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.last_mut().unwrap().extend(chars.next()),
            ':' if out.len() < 5 => out.push(String::new()),
            c => out.last_mut().unwrap().push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_match_with_wildcards_and_escapes() {
        let t = Target {
            host: "127.0.0.1",
            port: 5433,
            database: "tele",
            user: "sink",
        };
        let text = "# comment\n\
                    other:5433:tele:sink:no\n\
                    127.0.0.1:*:tele:sink:pa\\:ss\\\\word\n\
                    *:*:*:*:fallback\n";
        assert_eq!(find(text, &t).as_deref(), Some("pa:ss\\word"));
        let other = Target { user: "x", ..t };
        assert_eq!(find(text, &other).as_deref(), Some("fallback"));
        assert_eq!(find("h:1:d:u\n", &other), None);
    }
}

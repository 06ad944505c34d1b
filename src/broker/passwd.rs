//! Mosquitto 2.x password files: `user:$7$ITERATIONS$SALT$HASH`, PBKDF2-HMAC-SHA512
//! with a 12-byte salt and a 64-byte hash, both standard base64 (as `mosquitto_passwd`).

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

/// Iterations `mosquitto_passwd` 2.0 uses.
pub const ITERATIONS: u32 = 101;
const SALT_LEN: usize = 12;
const HASH_LEN: usize = 64;

/// A name mosquitto can read back from its password file: `:` separates the
/// name from the hash there, so mosquitto silently drops an entry whose name
/// holds one.
pub fn validate_user(name: &str) -> Result<(), String> {
    if name.contains(':') {
        return Err("contains ':', which separates name and hash in mosquitto's password file (mosquitto would drop the entry); choose a name without ':'".into());
    }
    Ok(())
}

pub fn hash_password(password: &str, salt: &[u8], iterations: u32) -> String {
    let mut out = [0u8; HASH_LEN];
    pbkdf2::pbkdf2_hmac::<sha2::Sha512>(password.as_bytes(), salt, iterations, &mut out);
    format!(
        "$7${iterations}${}${}",
        STANDARD.encode(salt),
        STANDARD.encode(out)
    )
}

pub fn new_entry(user: &str, password: &str) -> String {
    let salt: [u8; SALT_LEN] = rand::random();
    format!("{user}:{}", hash_password(password, &salt, ITERATIONS))
}

/// Checks `password` against one `$7$` hash (used by tests and `broker user`).
pub fn verify(password: &str, hash: &str) -> bool {
    let parts: Vec<&str> = hash.split('$').collect();
    let [_, "7", iterations, salt, _] = parts.as_slice() else {
        return false;
    };
    let (Ok(iterations), Ok(salt)) = (iterations.parse::<u32>(), STANDARD.decode(salt)) else {
        return false;
    };
    hash_password(password, &salt, iterations) == hash
}

/// Replaces or appends `user`'s line; returns the new file text and whether it replaced one.
pub fn upsert(existing: &str, user: &str, entry: &str) -> (String, bool) {
    let mut replaced = false;
    let mut lines: Vec<String> = existing
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            if l.split(':').next() == Some(user) {
                replaced = true;
                entry.to_string()
            } else {
                l.to_string()
            }
        })
        .collect();
    if !replaced {
        lines.push(entry.to_string());
    }
    (lines.join("\n") + "\n", replaced)
}

/// Removes `user`'s line; `None` when there was none.
pub fn remove(existing: &str, user: &str) -> Option<String> {
    let before = existing.lines().count();
    let kept: Vec<&str> = existing
        .lines()
        .filter(|l| l.split(':').next() != Some(user) && !l.trim().is_empty())
        .collect();
    if kept.len() == before {
        return None;
    }
    Some(if kept.is_empty() {
        String::new()
    } else {
        kept.join("\n") + "\n"
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_mosquitto_passwd_output() {
        // Produced by `mosquitto_passwd -b` 2.0.11 for alice/secret.
        let line = "$7$101$nYq7efY7Eg4rVUev$Lf827SHQ6JtjbMnt4oUboqL2hvx7dkz1C7L+wJsZkN7OTcxOqcCfcp8z4izbNrL4/TjvQA5tyFRdc+PQ3Gc1lQ==";
        assert!(verify("secret", line));
        assert!(!verify("Secret", line));
        let salt = STANDARD.decode("nYq7efY7Eg4rVUev").unwrap();
        assert_eq!(hash_password("secret", &salt, 101), line);
    }

    #[test]
    fn a_colon_in_a_user_name_is_refused() {
        assert!(validate_user("eve").is_ok());
        assert!(validate_user("e:ve")
            .unwrap_err()
            .starts_with("contains ':'"));
    }

    #[test]
    fn upsert_and_remove() {
        let (t, replaced) = upsert("", "a", "a:x");
        assert_eq!((t.as_str(), replaced), ("a:x\n", false));
        let (t, replaced) = upsert("a:x\nb:y\n", "a", "a:z");
        assert_eq!((t.as_str(), replaced), ("a:z\nb:y\n", true));
        assert_eq!(remove(&t, "b").unwrap(), "a:z\n");
        assert!(remove(&t, "c").is_none());
    }
}

//! Atomic, never-clobbering file writes.
//!
//! Every file mqttkit writes goes through [`StagedFiles`]: each file is first
//! written to a temporary file in its target directory, created with its final
//! mode (0600 for keys, so no window where a key is world-readable), then all
//! are renamed into place together. An interrupted run leaves no half file,
//! and a refusal to overwrite happens before anything is written.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use tempfile::NamedTempFile;

/// File mode for private keys and secrets.
pub const MODE_SECRET: u32 = 0o600;
/// File mode for certificates and configuration.
pub const MODE_PUBLIC: u32 = 0o644;

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("{} already exists{}; pass --force to replace {}", first_path(.0), more(.0), if .0.len() == 1 { "it" } else { "them" })]
    Exists(Vec<PathBuf>),
    #[error("cannot create directory {}: {cause}; choose a writable --out", .path.display())]
    CreateDir {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{} would be written twice in one run; give each file a distinct name", .0.display())]
    Duplicate(PathBuf),
    #[error("cannot write {}: {cause}", .path.display())]
    Write {
        path: PathBuf,
        cause: std::io::Error,
    },
}

fn first_path(paths: &[PathBuf]) -> String {
    paths
        .first()
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

fn more(paths: &[PathBuf]) -> String {
    match paths.len() {
        0 | 1 => String::new(),
        n => format!(" (and {} more)", n - 1),
    }
}

/// A set of files to be written all-or-nothing.
#[derive(Default)]
pub struct StagedFiles {
    files: Vec<(PathBuf, Vec<u8>, u32)>,
}

impl StagedFiles {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn add(&mut self, path: impl Into<PathBuf>, contents: impl Into<Vec<u8>>, mode: u32) {
        self.files.push((path.into(), contents.into(), mode));
    }

    pub fn paths(&self) -> impl Iterator<Item = &Path> {
        self.files.iter().map(|(p, _, _)| p.as_path())
    }

    /// Paths that exist already.
    pub fn existing(&self) -> Vec<PathBuf> {
        self.paths()
            .filter(|p| p.exists())
            .map(Path::to_path_buf)
            .collect()
    }

    /// Writes every file. Without `force`, fails before writing anything if
    /// any target exists.
    pub fn commit(self, force: bool) -> Result<Vec<PathBuf>, WriteError> {
        let mut seen = std::collections::HashSet::new();
        if let Some((dup, _, _)) = self.files.iter().find(|(p, _, _)| !seen.insert(p)) {
            return Err(WriteError::Duplicate(dup.clone()));
        }
        if !force {
            let existing = self.existing();
            if !existing.is_empty() {
                return Err(WriteError::Exists(existing));
            }
        }
        let mut staged = Vec::with_capacity(self.files.len());
        for (path, contents, mode) in &self.files {
            let dir = parent_dir(path);
            create_dir_all(dir)?;
            let tmp = write_temp(dir, path, contents, *mode)?;
            staged.push((tmp, path.clone()));
        }
        let mut written = Vec::with_capacity(staged.len());
        for (tmp, path) in staged {
            let result = if force {
                tmp.persist(&path).map(|_| ())
            } else {
                tmp.persist_noclobber(&path).map(|_| ())
            };
            result.map_err(|e| WriteError::Write {
                path: path.clone(),
                cause: e.error,
            })?;
            written.push(path);
        }
        Ok(written)
    }
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

pub fn create_dir_all(dir: &Path) -> Result<(), WriteError> {
    fs::create_dir_all(dir).map_err(|cause| WriteError::CreateDir {
        path: dir.to_path_buf(),
        cause,
    })
}

fn write_temp(
    dir: &Path,
    path: &Path,
    contents: &[u8],
    mode: u32,
) -> Result<NamedTempFile, WriteError> {
    let err = |cause| WriteError::Write {
        path: path.to_path_buf(),
        cause,
    };
    // The temp file is created with its final mode, so a key is never readable by others.
    let mut tmp = tempfile::Builder::new()
        .prefix(".mqttkit-")
        .permissions(fs::Permissions::from_mode(mode))
        .tempfile_in(dir)
        .map_err(err)?;
    tmp.write_all(contents).map_err(err)?;
    tmp.as_file().sync_all().map_err(err)?;
    Ok(tmp)
}

/// Writes one file atomically, replacing it if it exists.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), WriteError> {
    let mut set = StagedFiles::new();
    set.add(path, contents, mode);
    set.commit(true).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn refuses_to_overwrite_and_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let existing = dir.path().join("a");
        fs::write(&existing, "old").unwrap();
        let mut set = StagedFiles::new();
        set.add(dir.path().join("b"), "new", MODE_PUBLIC);
        set.add(&existing, "new", MODE_PUBLIC);
        let err = set.commit(false).unwrap_err();
        assert!(err.to_string().contains("pass --force"), "{err}");
        assert!(!dir.path().join("b").exists());
        assert_eq!(fs::read_to_string(&existing).unwrap(), "old");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1, "no temp left");
    }

    #[test]
    fn secret_files_are_0600() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("sub/k.key");
        write_atomic(&key, b"secret", MODE_SECRET).unwrap();
        assert_eq!(fs::metadata(&key).unwrap().mode() & 0o777, 0o600);
        write_atomic(&key, b"secret2", MODE_PUBLIC).unwrap();
        assert_eq!(fs::metadata(&key).unwrap().mode() & 0o777, 0o644);
    }
}

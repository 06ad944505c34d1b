//! Atomic, all-or-nothing, never-clobbering file writes.
//!
//! Every file mqttkit writes goes through [`StagedFiles`]. A set of files is
//! one transaction, because a half-replaced PKI is worse than none: a new CA
//! beside old device certificates chains nothing.
//!
//! 1. Validate every target before touching anything (an existing file
//!    without `--force`, a directory or a read-only file where a file goes).
//! 2. Stage each file as `.mqttkit-new-*` in its target directory, created
//!    with its final mode (0600 for keys: no window where a key is readable
//!    by others) and synced.
//! 3. Keep each file that will be replaced as a hard link `.mqttkit-old-*`.
//! 4. Write a journal (`.mqttkit-journal`) naming all of the above, then
//!    rename the staged files into place, then mark the journal committed,
//!    then delete the backups and the journal.
//!
//! A failure in step 4 restores the old set before returning. A crash at any
//! point is repaired by the next write into the same directory (or by
//! [`recover_dir`]): an uncommitted journal rolls back to the old set, a
//! committed one finishes; staged files and backups that no journal names
//! are deleted, so no key material outlives a crash in a temp file.
//! Writers into one directory are serialised by a lock on `.mqttkit.lock`.

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

/// File mode for private keys and secrets.
pub const MODE_SECRET: u32 = 0o600;
/// File mode for certificates and configuration.
pub const MODE_PUBLIC: u32 = 0o644;

const TEMP_PREFIX: &str = ".mqttkit-";
const NEW_PREFIX: &str = ".mqttkit-new-";
const OLD_PREFIX: &str = ".mqttkit-old-";
const JOURNAL: &str = ".mqttkit-journal";
const JOURNAL_TMP: &str = ".mqttkit-journal.tmp";
const LOCK: &str = ".mqttkit.lock";

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
    #[error("{} is not a regular file; move it away so mqttkit can write a file there (nothing was written)", .0.display())]
    NotAFile(PathBuf),
    #[error("{} is read-only; make it writable (chmod u+w) to let --force replace it (nothing was written)", .0.display())]
    ReadOnly(PathBuf),
    #[error("cannot write {}: {cause}{}", .path.display(), if *.restored { " (the previous files were restored)" } else { "" })]
    Write {
        path: PathBuf,
        cause: std::io::Error,
        /// Files already replaced were put back before returning.
        restored: bool,
    },
    #[error("cannot lock {}: {cause}", .path.display())]
    Lock {
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

fn write_err(path: &Path) -> impl Fn(std::io::Error) -> WriteError + '_ {
    move |cause| WriteError::Write {
        path: path.to_path_buf(),
        cause,
        restored: false,
    }
}

/// A set of files to be written all-or-nothing.
#[derive(Default)]
pub struct StagedFiles {
    files: Vec<(PathBuf, Vec<u8>, u32)>,
}

/// One file of a transaction, as the journal records it (absolute paths).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    target: PathBuf,
    staged: PathBuf,
    /// The replaced file, kept until the transaction is committed.
    backup: Option<PathBuf>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Journal {
    committed: bool,
    entries: Vec<Entry>,
    /// Every copy of this journal: one in each directory the set writes to.
    copies: Vec<PathBuf>,
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
            .filter(|p| p.symlink_metadata().is_ok())
            .map(Path::to_path_buf)
            .collect()
    }

    /// Writes every file, or none. Without `force`, fails before writing
    /// anything if any target exists.
    pub fn commit(self, force: bool) -> Result<Vec<PathBuf>, WriteError> {
        self.check_targets(force)?;
        let dirs = self.dirs()?;
        // Locks are taken in path order, so two writers cannot deadlock.
        let _locks = dirs
            .iter()
            .map(|d| lock_dir(d))
            .collect::<Result<Vec<_>, _>>()?;
        for d in &dirs {
            recover_locked(d);
        }
        // Checked again under the lock: another writer may have been first.
        self.check_targets(force)?;
        let entries = self.stage()?;
        let copies: Vec<PathBuf> = dirs.iter().map(|d| d.join(JOURNAL)).collect();
        let mut journal = Journal {
            committed: false,
            entries,
            copies,
        };
        if let Err(e) = write_journal(&journal).and_then(|()| swap_in(&journal.entries)) {
            roll_back(&journal);
            return Err(restored(e));
        }
        journal.committed = true;
        // Past this point the new set is in place; a failure to record or
        // clean up is repaired by the next run, not reported.
        let _ = write_journal(&journal);
        finish(&journal);
        Ok(self.files.into_iter().map(|(p, _, _)| p).collect())
    }

    fn check_targets(&self, force: bool) -> Result<(), WriteError> {
        let mut seen = std::collections::HashSet::new();
        if let Some((dup, _, _)) = self.files.iter().find(|(p, _, _)| !seen.insert(p)) {
            return Err(WriteError::Duplicate(dup.clone()));
        }
        let existing = self.existing();
        if !force && !existing.is_empty() {
            return Err(WriteError::Exists(existing));
        }
        for path in existing {
            let meta = path.symlink_metadata().map_err(write_err(&path))?;
            // A symlink is replaced by the file, as rename(2) does.
            if !meta.file_type().is_file() && !meta.file_type().is_symlink() {
                return Err(WriteError::NotAFile(path));
            }
            if meta.permissions().mode() & 0o222 == 0 {
                return Err(WriteError::ReadOnly(path));
            }
        }
        Ok(())
    }

    /// The target directories, created and absolute, sorted and distinct.
    fn dirs(&self) -> Result<Vec<PathBuf>, WriteError> {
        let mut dirs = BTreeSet::new();
        for (path, _, _) in &self.files {
            let dir = parent_dir(path);
            create_dir_all(dir)?;
            dirs.insert(fs::canonicalize(dir).map_err(write_err(dir))?);
        }
        Ok(dirs.into_iter().collect())
    }

    /// Writes every file as a synced temp beside its target and links the
    /// files it replaces as backups. On failure nothing staged is left.
    fn stage(&self) -> Result<Vec<Entry>, WriteError> {
        let mut entries: Vec<Entry> = Vec::with_capacity(self.files.len());
        for (path, contents, mode) in &self.files {
            match stage_one(path, contents, *mode) {
                Ok(entry) => entries.push(entry),
                Err(e) => {
                    entries.iter().for_each(discard);
                    return Err(e);
                }
            }
        }
        Ok(entries)
    }
}

fn stage_one(path: &Path, contents: &[u8], mode: u32) -> Result<Entry, WriteError> {
    let dir = fs::canonicalize(parent_dir(path)).map_err(write_err(path))?;
    let name = path
        .file_name()
        .ok_or_else(|| WriteError::NotAFile(path.into()))?;
    let target = dir.join(name);
    let staged = write_temp(&dir, NEW_PREFIX, contents, mode).map_err(write_err(path))?;
    let backup = if target.symlink_metadata().is_ok() {
        match keep_old(&dir, &target) {
            Ok(b) => Some(b),
            Err(e) => {
                let _ = fs::remove_file(&staged);
                return Err(write_err(path)(e));
            }
        }
    } else {
        None
    };
    Ok(Entry {
        target,
        staged,
        backup,
    })
}

/// A second name for the file about to be replaced (a copy where the file
/// system has no hard links).
fn keep_old(dir: &Path, target: &Path) -> std::io::Result<PathBuf> {
    let backup = dir.join(format!("{OLD_PREFIX}{}", uuid_like()));
    if fs::hard_link(target, &backup).is_err() {
        fs::copy(target, &backup)?;
    }
    Ok(backup)
}

fn uuid_like() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// Renames each staged file onto its target. New files are linked, so an
/// existing file that appeared meanwhile is never clobbered.
fn swap_in(entries: &[Entry]) -> Result<(), WriteError> {
    for e in entries {
        let result = if e.backup.is_some() {
            fs::rename(&e.staged, &e.target)
        } else {
            fs::hard_link(&e.staged, &e.target).and_then(|()| fs::remove_file(&e.staged))
        };
        result.map_err(write_err(&e.target))?;
    }
    sync_dirs(entries);
    Ok(())
}

fn restored(e: WriteError) -> WriteError {
    match e {
        WriteError::Write { path, cause, .. } => WriteError::Write {
            path,
            cause,
            restored: true,
        },
        other => other,
    }
}

/// Puts the old set back: replaced files from their backups, new files
/// removed, staged files deleted. Idempotent, so a crash during a roll
/// back is finished by the next one.
fn roll_back(journal: &Journal) {
    for e in &journal.entries {
        match &e.backup {
            Some(b) if b.exists() => {
                let _ = fs::rename(b, &e.target);
            }
            Some(_) => {}
            None => {
                let _ = fs::remove_file(&e.target);
            }
        }
        let _ = fs::remove_file(&e.staged);
    }
    sync_dirs(&journal.entries);
    remove_journal(journal);
}

/// Deletes what a committed transaction no longer needs.
fn finish(journal: &Journal) {
    journal.entries.iter().for_each(discard);
    sync_dirs(&journal.entries);
    remove_journal(journal);
}

fn discard(e: &Entry) {
    let _ = fs::remove_file(&e.staged);
    if let Some(b) = &e.backup {
        let _ = fs::remove_file(b);
    }
}

fn remove_journal(journal: &Journal) {
    for copy in &journal.copies {
        let _ = fs::remove_file(copy);
    }
}

fn write_journal(journal: &Journal) -> Result<(), WriteError> {
    let text = serde_json::to_vec(journal).expect("a journal serialises");
    for copy in &journal.copies {
        let tmp = parent_dir(copy).join(JOURNAL_TMP);
        let err = write_err(copy);
        let mut f = fs::File::create(&tmp).map_err(&err)?;
        f.write_all(&text).map_err(&err)?;
        f.sync_all().map_err(&err)?;
        fs::rename(&tmp, copy).map_err(&err)?;
        sync_dir(parent_dir(copy));
    }
    Ok(())
}

/// Repairs what a crashed write left in `dir`: finishes or rolls back an
/// interrupted transaction and deletes stray temp files (they may hold keys).
pub fn recover_dir(dir: &Path) -> Result<(), WriteError> {
    if !dir.is_dir() {
        return Ok(());
    }
    let _lock = lock_dir(dir)?;
    recover_locked(dir);
    Ok(())
}

fn recover_locked(dir: &Path) {
    if let Some(journal) = read_journal(&dir.join(JOURNAL)) {
        // Copies are updated one by one: any committed copy decides.
        let committed = journal.committed
            || journal
                .copies
                .iter()
                .filter_map(|c| read_journal(c))
                .any(|j| j.committed);
        if committed {
            tracing::debug!("finishing an interrupted write in {}", dir.display());
            finish(&journal);
        } else {
            tracing::debug!("rolling back an interrupted write in {}", dir.display());
            roll_back(&journal);
        }
    }
    remove_strays(dir);
}

fn read_journal(path: &Path) -> Option<Journal> {
    let bytes = fs::read(path).ok()?;
    match serde_json::from_slice(&bytes) {
        Ok(j) => Some(j),
        Err(_) => {
            // A journal is only ever renamed into place whole; one that does
            // not parse was not ours to act on.
            tracing::warn!(
                "{}: not a journal mqttkit can read; left as is",
                path.display()
            );
            None
        }
    }
}

/// Temp files with no journal naming them: staged files from a crash before
/// the journal was written, and older versions' `.mqttkit-XXXX` temps.
fn remove_strays(dir: &Path) {
    let Ok(read) = fs::read_dir(dir) else { return };
    for entry in read.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(TEMP_PREFIX) && name != JOURNAL {
            let is_file = entry.file_type().is_ok_and(|t| t.is_file());
            if is_file {
                tracing::debug!("removing stray temp file {}", entry.path().display());
                let _ = fs::remove_file(entry.path());
            }
        }
    }
}

fn lock_dir(dir: &Path) -> Result<Flock<fs::File>, WriteError> {
    let path = dir.join(LOCK);
    let err = |cause| WriteError::Lock {
        path: path.clone(),
        cause,
    };
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(err)?;
    Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, errno)| err(errno.into()))
}

fn sync_dirs(entries: &[Entry]) {
    let dirs: BTreeSet<&Path> = entries.iter().map(|e| parent_dir(&e.target)).collect();
    dirs.into_iter().for_each(sync_dir);
}

/// Makes renames in `dir` durable; best effort (not every file system can).
fn sync_dir(dir: &Path) {
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
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

/// Writes a synced temp file in `dir`, created with its final mode, so a
/// key is never readable by others.
fn write_temp(dir: &Path, prefix: &str, contents: &[u8], mode: u32) -> std::io::Result<PathBuf> {
    let mut tmp = tempfile::Builder::new()
        .prefix(prefix)
        .permissions(fs::Permissions::from_mode(mode))
        .tempfile_in(dir)?;
    tmp.write_all(contents)?;
    tmp.as_file().sync_all()?;
    let (_, path) = tmp.keep().map_err(|e| e.error)?;
    Ok(path)
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

    /// What a directory holds, except the lock file.
    fn listing(dir: &Path) -> Vec<(String, Vec<u8>)> {
        let mut v: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name() != LOCK)
            .map(|e| {
                let data = fs::read(e.path()).unwrap_or_default();
                (e.file_name().to_string_lossy().into_owned(), data)
            })
            .collect();
        v.sort();
        v
    }

    #[test]
    fn refuses_to_overwrite_and_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let existing = dir.path().join("a");
        fs::write(&existing, "old").unwrap();
        let mut set = StagedFiles::new();
        set.add(dir.path().join("b"), "new", MODE_PUBLIC);
        set.add(&existing, "new", MODE_PUBLIC);
        let err = set.commit(false).unwrap_err();
        assert!(matches!(err, WriteError::Exists(_)), "{err}");
        assert!(
            err.to_string().ends_with("pass --force to replace it"),
            "{err}"
        );
        assert_eq!(listing(dir.path()), vec![("a".into(), b"old".to_vec())]);
    }

    #[test]
    fn secret_files_are_0600() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("sub/k.key");
        write_atomic(&key, b"secret", MODE_SECRET).unwrap();
        assert_eq!(fs::metadata(&key).unwrap().mode() & 0o777, 0o600);
        write_atomic(&key, b"secret2", MODE_PUBLIC).unwrap();
        assert_eq!(fs::metadata(&key).unwrap().mode() & 0o777, 0o644);
        assert_eq!(listing(&dir.path().join("sub")).len(), 1, "no temp left");
    }

    #[test]
    fn a_directory_where_a_file_goes_leaves_the_old_set_untouched() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("ca.key"), "old ca").unwrap();
        fs::create_dir(dir.path().join("broker.key")).unwrap();
        let before = listing(dir.path());
        let mut set = StagedFiles::new();
        set.add(dir.path().join("ca.key"), "new ca", MODE_SECRET);
        set.add(dir.path().join("broker.key"), "new broker", MODE_SECRET);
        let err = set.commit(true).unwrap_err();
        assert!(matches!(err, WriteError::NotAFile(_)), "{err}");
        assert_eq!(listing(dir.path()), before);
    }

    #[test]
    fn a_read_only_file_is_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let ro = dir.path().join("ca.crt");
        fs::write(&ro, "old").unwrap();
        fs::set_permissions(&ro, fs::Permissions::from_mode(0o444)).unwrap();
        let mut set = StagedFiles::new();
        set.add(dir.path().join("new.crt"), "x", MODE_PUBLIC);
        set.add(&ro, "new", MODE_PUBLIC);
        let err = set.commit(true).unwrap_err();
        assert!(matches!(err, WriteError::ReadOnly(_)), "{err}");
        assert_eq!(
            listing(dir.path()),
            vec![("ca.crt".into(), b"old".to_vec())]
        );
    }

    /// A failure half way through the renames puts every old file back.
    #[test]
    fn a_failing_rename_restores_the_files_already_replaced() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("a"), "old a").unwrap();
        fs::write(dir.path().join("b"), "old b").unwrap();
        let mut set = StagedFiles::new();
        set.add(dir.path().join("a"), "new a", MODE_PUBLIC);
        set.add(dir.path().join("b"), "new b", MODE_PUBLIC);
        set.add(dir.path().join("c"), "new c", MODE_PUBLIC);
        let entries = set.stage().unwrap();
        let journal = Journal {
            committed: false,
            copies: vec![dir.path().join(JOURNAL)],
            entries,
        };
        write_journal(&journal).unwrap();
        // As if the process died after two of three renames.
        for e in &journal.entries[..2] {
            fs::rename(&e.staged, &e.target).unwrap();
        }
        recover_dir(dir.path()).unwrap();
        assert_eq!(
            listing(dir.path()),
            vec![
                ("a".into(), b"old a".to_vec()),
                ("b".into(), b"old b".to_vec())
            ]
        );
    }

    #[test]
    fn a_committed_journal_is_finished_and_strays_removed() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("a"), "old a").unwrap();
        fs::write(dir.path().join(".mqttkit-AbC123"), "old-version temp key").unwrap();
        let mut set = StagedFiles::new();
        set.add(dir.path().join("a"), "new a", MODE_PUBLIC);
        let entries = set.stage().unwrap();
        let journal = Journal {
            committed: true,
            copies: vec![dir.path().join(JOURNAL)],
            entries,
        };
        swap_in(&journal.entries).unwrap();
        write_journal(&journal).unwrap();
        recover_dir(dir.path()).unwrap();
        assert_eq!(listing(dir.path()), vec![("a".into(), b"new a".to_vec())]);
    }
}

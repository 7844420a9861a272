//! Crash-safe file writing for the keys directory: write a temporary file with the final
//! permissions, fsync it, move it into place (refusing to replace an existing file unless told),
//! then fsync the directory so the new name survives a crash.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Permission bits of files holding secrets (sealed keys, dev keys, passphrases).
pub const SECRET_FILE_MODE: u32 = 0o600;
/// Permission bits of public files (certificates, metadata) in the keys directory.
pub const PUBLIC_FILE_MODE: u32 = 0o644;
/// Permission bits of every directory the daemon creates under its data directory.
pub const DIR_MODE: u32 = 0o700;

/// Whether an existing file at the target path may be replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overwrite {
    /// Fail with [`io::ErrorKind::AlreadyExists`] if the target exists.
    Refuse,
    /// Atomically replace the target.
    Replace,
}

/// Writes `bytes` to `path` atomically with the given permission bits.
///
/// The data go to a uniquely named temporary file in the same directory (created with
/// `O_EXCL` and `mode`, so the content is never visible with wider permissions), which is
/// fsynced and then either renamed over the target ([`Overwrite::Replace`]) or hard-linked to
/// it ([`Overwrite::Refuse`]: linking fails if the target exists, with no race). Finally the
/// directory is fsynced.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32, overwrite: Overwrite) -> io::Result<()> {
    let dir = parent_dir(path);
    let file_name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    if overwrite == Overwrite::Refuse && fs::symlink_metadata(path).is_ok() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "file already exists and will not be overwritten",
        ));
    }
    let mut suffix = [0u8; 8];
    super::random_bytes(&mut suffix).map_err(|e| io::Error::other(e.to_string()))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(file_name);
    tmp_name.push(format!(".{}.tmp", hex::encode(suffix)));
    let tmp = dir.join(tmp_name);

    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        // The umask may have narrowed `mode`; make the bits exact.
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        match overwrite {
            Overwrite::Replace => fs::rename(&tmp, path)?,
            Overwrite::Refuse => {
                fs::hard_link(&tmp, path)?;
                fs::remove_file(&tmp)?;
            }
        }
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Creates `path` and missing parents with mode 0700 (existing directories are left as they are).
pub fn create_dir_all_private(path: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(path)
}

/// Creates the directory `path` (mode 0700); fails if it exists.
pub fn create_dir_private(path: &Path) -> io::Result<()> {
    fs::DirBuilder::new().mode(DIR_MODE).create(path)?;
    // Exact bits despite the umask.
    fs::set_permissions(path, fs::Permissions::from_mode(DIR_MODE))
}

/// fsyncs a directory, making renames and new names in it durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Renames `from` to `to` and fsyncs the parent directories of both.
pub fn rename_durable(from: &Path, to: &Path) -> io::Result<()> {
    fs::rename(from, to)?;
    sync_dir(parent_dir(to))?;
    let from_dir = parent_dir(from);
    if from_dir != parent_dir(to) {
        sync_dir(from_dir)?;
    }
    Ok(())
}

/// The directory a path lives in (`.` for a bare file name).
pub fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_atomic_modes_and_overwrite() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let p = dir.path().join("a.bin");
        write_atomic(&p, b"one", SECRET_FILE_MODE, Overwrite::Refuse)?;
        assert_eq!(fs::read(&p)?, b"one");
        assert_eq!(fs::metadata(&p)?.permissions().mode() & 0o7777, 0o600);
        let err = write_atomic(&p, b"two", SECRET_FILE_MODE, Overwrite::Refuse)
            .err()
            .ok_or_else(|| io::Error::other("overwrote silently"))?;
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read(&p)?, b"one");
        write_atomic(&p, b"two", PUBLIC_FILE_MODE, Overwrite::Replace)?;
        assert_eq!(fs::read(&p)?, b"two");
        assert_eq!(fs::metadata(&p)?.permissions().mode() & 0o7777, 0o644);
        // No temporary files are left behind.
        let names: Vec<_> = fs::read_dir(dir.path())?.collect::<Result<_, _>>()?;
        assert_eq!(names.len(), 1);
        Ok(())
    }

    #[test]
    fn private_dirs_are_0700() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let p = dir.path().join("x/y");
        create_dir_all_private(&p)?;
        assert_eq!(fs::metadata(&p)?.permissions().mode() & 0o777, 0o700);
        let q = dir.path().join("z");
        create_dir_private(&q)?;
        assert_eq!(fs::metadata(&q)?.permissions().mode() & 0o777, 0o700);
        assert!(create_dir_private(&q).is_err());
        Ok(())
    }
}

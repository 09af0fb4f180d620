//! Durable file operations: what is acknowledged must survive a power cut.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;

/// fsync of a directory, so a rename or create inside it is itself durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Writes `bytes` to `dir/name` atomically: temp file, write, fsync, rename, fsync dir.
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        // write_all retries partial writes.
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, dir.join(name))?;
    sync_dir(dir)
}

/// Renames `from` to `to` (same file system) and makes both directories durable.
pub fn rename_durable(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::rename(from, to)?;
    if let Some(d) = to.parent() {
        sync_dir(d)?;
    }
    if let Some(d) = from.parent()
        && Some(d) != to.parent()
    {
        sync_dir(d)?;
    }
    Ok(())
}

/// Moves `from` to `to`: replacing what is there with `overwrite`, else only if the name
/// is free. Returns the size of the file replaced, or `None` when another file holds the
/// name (and `from` stays).
pub fn place(from: &Path, to: &Path, overwrite: bool) -> std::io::Result<Option<u64>> {
    if overwrite {
        let replaced = std::fs::metadata(to).map(|m| m.len()).unwrap_or(0);
        rename_durable(from, to)?;
        return Ok(Some(replaced));
    }
    if !link_new(from, to)? {
        return Ok(None);
    }
    std::fs::remove_file(from)?;
    Ok(Some(0))
}

/// Links `from` at `to` unless another file holds that name (returns false); a link an
/// earlier attempt made is fine. The link is atomic: of two racing, one gets the name.
pub fn link_new(from: &Path, to: &Path) -> std::io::Result<bool> {
    match std::fs::hard_link(from, to) {
        Ok(()) => {
            if let Some(d) = to.parent() {
                sync_dir(d)?;
            }
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => same_file(from, to),
        Err(e) => Err(e),
    }
}

/// Whether two paths name the same file (device and inode).
pub fn same_file(a: &Path, b: &Path) -> std::io::Result<bool> {
    use std::os::unix::fs::MetadataExt;
    let (a, b) = (std::fs::metadata(a)?, std::fs::metadata(b)?);
    Ok(a.dev() == b.dev() && a.ino() == b.ino())
}

/// True when an I/O error means the disk is full (mapped to HTTP 507).
pub fn is_disk_full(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(code) if code == rustix::io::Errno::NOSPC.raw_os_error()
        || code == rustix::io::Errno::DQUOT.raw_os_error())
}

/// True when an I/O error means no file descriptor was free (EMFILE/ENFILE): transient,
/// mapped to 503 with `Retry-After`.
pub fn is_out_of_files(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(code) if code == rustix::io::Errno::MFILE.raw_os_error()
        || code == rustix::io::Errno::NFILE.raw_os_error())
}

/// Removes the regular files named `prefix…` in `dir` and in its subdirectories one
/// level down (a tenant's objects dir).
pub fn remove_temp_files(dir: &Path, prefix: &str) -> std::io::Result<()> {
    let is_temp = |e: &std::fs::DirEntry| e.file_name().to_string_lossy().starts_with(prefix);
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            for inner in std::fs::read_dir(entry.path())? {
                let inner = inner?;
                if inner.file_type()?.is_file() && is_temp(&inner) {
                    std::fs::remove_file(inner.path())?;
                }
            }
        } else if kind.is_file() && is_temp(&entry) {
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

//! Atomic file replacement, and recognising our own writes.
//!
//! Everything we put on the host goes through [`replace`]: a temporary file in the same
//! directory (so the final `rename` stays on one filesystem and is atomic), fsync'd and given
//! its final mode before it is renamed over the target, then the directory is fsync'd. A
//! reader — the container runtime loading the CNI configuration, or the kubelet exec'ing the
//! plugin — sees the old file or the new one, never a half-written one, even across a crash.
//!
//! Temporary names are `.<target>.mesh-redirect-tmp-<pid>-<n>`: hidden, and ending in no CNI
//! extension, so neither libcni nor our own primary lookup ever loads one. A crash can leave
//! one behind; [`clean_stale_temps`] removes those that are old enough not to be in flight.

use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

/// Marks our temporary files (see the module docs).
pub const TEMP_MARK: &str = ".mesh-redirect-tmp-";

/// A temporary file older than this is a crash's leftover, not a write in progress: our writes
/// take milliseconds, and another installer (a DaemonSet pod being replaced) is not slower.
pub const STALE_TEMP_AGE: Duration = Duration::from_secs(30);

/// True for the names [`replace`] gives its temporary files.
pub fn is_temp_name(name: &OsStr) -> bool {
    let b = name.as_bytes();
    b.first() == Some(&b'.')
        && b.windows(TEMP_MARK.len())
            .any(|w| w == TEMP_MARK.as_bytes())
}

fn temp_path(target: &Path) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = target.file_name().unwrap_or(OsStr::new("file"));
    let mut tmp = std::ffi::OsString::from(".");
    tmp.push(name);
    tmp.push(format!("{TEMP_MARK}{}-{n}", std::process::id()));
    target.with_file_name(tmp)
}

/// Atomically replaces `target` with what `fill` writes, with permission bits `mode`.
/// Returns the new file's [`Stamp`], taken from our own descriptor before the rename, so it
/// describes what we wrote even if someone replaces the file right after.
pub fn replace(
    target: &Path,
    mode: u32,
    fill: impl FnOnce(&mut File) -> io::Result<()>,
) -> io::Result<Stamp> {
    let tmp = temp_path(target);
    // Created 0600 whatever the final mode: a kubeconfig's token must not be readable even for
    // the moment before the chmod.
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    let written = (|| {
        fill(&mut file)?;
        file.flush()?;
        // fchmod on the descriptor: exact bits, independent of the umask.
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.sync_all()?;
        let stamp = Stamp::of(&file.metadata()?);
        drop(file);
        fs::rename(&tmp, target)?;
        Ok(stamp)
    })();
    let stamp = match written {
        Ok(stamp) => stamp,
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
    };
    // The rename itself must survive a power cut, or the old file comes back after reboot.
    sync_dir(target.parent().unwrap_or(Path::new(".")))?;
    Ok(stamp)
}

/// [`replace`] with fixed contents.
pub fn write_atomic(target: &Path, contents: &[u8], mode: u32) -> io::Result<Stamp> {
    replace(target, mode, |f| f.write_all(contents))
}

/// [`replace`] with a copy of `source`'s contents.
pub fn copy_atomic(source: &Path, target: &Path, mode: u32) -> io::Result<Stamp> {
    let mut src = File::open(source)?;
    replace(target, mode, |f| io::copy(&mut src, f).map(drop))
}

/// fsyncs a directory, so that a rename or unlink in it is durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// True when `b` exists and has exactly `a`'s contents (compared in chunks: the binary can
/// be tens of megabytes).
pub fn same_contents(a: &Path, b: &Path) -> io::Result<bool> {
    let mut fb = match File::open(b) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    let mut fa = File::open(a)?;
    if fa.metadata()?.len() != fb.metadata()?.len() {
        return Ok(false);
    }
    let (mut ba, mut bb) = (vec![0u8; 64 << 10], vec![0u8; 64 << 10]);
    loop {
        let n = read_full(&mut fa, &mut ba)?;
        if read_full(&mut fb, &mut bb[..n])? != n || ba[..n] != bb[..n] {
            return Ok(false);
        }
        if n == 0 {
            return Ok(true);
        }
    }
}

fn read_full(f: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Reads a file, `None` if it does not exist.
pub fn read_optional(path: &Path) -> io::Result<Option<Vec<u8>>> {
    match fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Removes a file; `false` if it was already gone.
pub fn remove_if_exists(path: &Path) -> io::Result<bool> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Removes our temporary files in `dir` older than `min_age`, returning what was removed.
/// Best effort: a file that cannot be removed is left for the next pass.
pub fn clean_stale_temps(dir: &Path, min_age: Duration) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let now = SystemTime::now();
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        if !is_temp_name(&entry.file_name()) {
            continue;
        }
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .map(|t| now.duration_since(t).unwrap_or_default() >= min_age)
            .unwrap_or(false);
        if old && fs::remove_file(entry.path()).is_ok() {
            removed.push(entry.path());
        }
    }
    removed
}

/// Identity and version of a file as we last left it. An inotify event for a path whose
/// stamp still equals the one taken when we wrote it was caused by that write. The ctime is
/// left out on purpose: the rename that publishes our file changes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    mode: u32,
}

impl Stamp {
    fn of(m: &fs::Metadata) -> Stamp {
        Stamp {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
            mode: m.mode(),
        }
    }
}

/// The stamp of `path` (not following a final symlink: swapping a link is a change), or
/// `None` when it does not exist or cannot be examined.
pub fn stamp(path: &Path) -> Option<Stamp> {
    fs::symlink_metadata(path).ok().map(|m| Stamp::of(&m))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_names_never_look_like_cni_files() {
        let t = temp_path(Path::new("/d/10-calico.conflist"));
        let name = t.file_name().unwrap();
        assert!(is_temp_name(name));
        assert!(!name.to_string_lossy().ends_with(".conflist"));
        assert_eq!(t.parent(), Some(Path::new("/d")));
        assert!(!is_temp_name(OsStr::new("10-calico.conflist")));
        assert!(!is_temp_name(OsStr::new("x.mesh-redirect-tmp-1")));
    }
}

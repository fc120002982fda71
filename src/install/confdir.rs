//! The CNI configuration directory: which file is the primary, and writing our entry into it.
//!
//! The container runtime (containerd's go-cni, CRI-O's ocicni, both through libcni) loads the
//! lexically first `*.conf`, `*.conflist` or `*.json` file of the directory. That file is the
//! one we must chain into; an entry in any other file would never run.

use super::conflist::{self, Shape};
use super::error::InstallError;
use super::files;
use serde_json::{Map, Value};
use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The extensions libcni's `ConfFiles` is asked for by the runtimes.
pub const CNI_EXTENSIONS: [&str; 3] = ["conf", "conflist", "json"];
/// Mode of a configuration we create when nothing tells us better.
const DEFAULT_CONF_MODE: u32 = 0o644;

/// True for a name the runtime would load as a network configuration.
pub fn is_cni_name(name: &OsStr) -> bool {
    !files::is_temp_name(name)
        && Path::new(name)
            .extension()
            .and_then(OsStr::to_str)
            .is_some_and(|e| CNI_EXTENSIONS.contains(&e))
}

/// The configuration files of `dir`, in the runtime's order (byte-wise by name, like Go's
/// `sort.Strings`). A missing directory has none.
pub fn candidates(dir: &Path) -> Result<Vec<PathBuf>, InstallError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(InstallError::io("cannot list", dir, e)),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| InstallError::io("cannot list", dir, e))?;
        let name = entry.file_name();
        // `fs::metadata` follows symlinks: a link to a file counts, as it does for libcni.
        if is_cni_name(&name) && fs::metadata(entry.path()).is_ok_and(|m| m.is_file()) {
            names.push(name);
        }
    }
    names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    Ok(names.into_iter().map(|n| dir.join(n)).collect())
}

/// What [`apply`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The plugin list that now holds our entry.
    pub conflist: PathBuf,
    /// It was (re)written.
    pub written: bool,
    /// The stamp of what we wrote (when `written`), to recognise the events it causes.
    pub stamp: Option<files::Stamp>,
    /// The single-plugin file that was wrapped into `conflist` and then removed.
    pub converted_from: Option<PathBuf>,
}

fn invalid(path: &Path, reason: impl ToString) -> InstallError {
    InstallError::InvalidPrimary {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

fn mode_of(path: &Path) -> u32 {
    fs::metadata(path).map_or(DEFAULT_CONF_MODE, |m| m.permissions().mode() & 0o7777)
}

/// Reads and parses a configuration; `None` if it vanished meanwhile.
fn load(path: &Path) -> Result<Option<Map<String, Value>>, InstallError> {
    let Some(bytes) =
        files::read_optional(path).map_err(|e| InstallError::io("cannot read", path, e))?
    else {
        return Ok(None);
    };
    conflist::parse(&bytes)
        .map(Some)
        .map_err(|e| invalid(path, e))
}

/// Chains `entry` into the primary configuration of `dir`.
///
/// A single plugin becomes `<stem>.conflist`: the list is written first and the old file
/// removed only then, so the directory always has a loadable primary. (Until the removal, the
/// old `.conf` sorts first and stays in use: the node is as before, not broken.)
pub fn apply(dir: &Path, entry: &Map<String, Value>) -> Result<Applied, InstallError> {
    files::clean_stale_temps(dir, files::STALE_TEMP_AGE);
    let primary = candidates(dir)?
        .into_iter()
        .next()
        .ok_or_else(|| InstallError::NoPrimary {
            dir: dir.to_path_buf(),
        })?;
    let current = load(&primary)?.ok_or_else(|| invalid(&primary, "vanished while reading"))?;
    let chained =
        conflist::chain(current.clone(), entry.clone()).map_err(|e| invalid(&primary, e))?;
    if chained.has_istio_cni {
        tracing::warn!(
            file = %primary.display(),
            "an istio-cni entry is chained too; it is left in place, but both plugins will redirect the same pods"
        );
    }

    // Istio renames `.conf` only; a `.json` holding a single plugin is just as unusable as a
    // list, so it is renamed too. A list found in a `.conf`/`.json` stays where it is.
    let target = match chained.shape {
        Shape::Single if primary.extension() != Some(OsStr::new("conflist")) => {
            primary.with_extension("conflist")
        }
        _ => primary.clone(),
    };
    let mode = mode_of(&primary);

    if target == primary {
        if conflist::same(&current, &chained.config) {
            return Ok(Applied {
                conflist: target,
                written: false,
                stamp: None,
                converted_from: None,
            });
        }
        let stamp = write(&target, &chained.config, mode)?;
        return Ok(Applied {
            conflist: target,
            written: true,
            stamp: Some(stamp),
            converted_from: None,
        });
    }

    // Conversion. The target may exist already: our earlier conversion, shadowed now that the
    // primary has written its `.conf` again (it sorts first). istio-cni overwrites it too.
    let existing = match load(&target) {
        Ok(e) => e,
        Err(InstallError::InvalidPrimary { .. }) => None,
        Err(e) => return Err(e),
    };
    let stamp = match &existing {
        Some(e) if conflist::same(e, &chained.config) => None,
        other => {
            if other.as_ref().is_some_and(|e| !conflist::has_entry(e)) {
                tracing::warn!(
                    file = %target.display(),
                    shadowed_by = %primary.display(),
                    "replacing an inactive plugin list that has no entry of ours"
                );
            }
            Some(write(&target, &chained.config, mode)?)
        }
    };
    files::remove_if_exists(&primary)
        .map_err(|e| InstallError::io("cannot remove", &primary, e))?;
    files::sync_dir(dir).map_err(|e| InstallError::io("cannot sync", dir, e))?;
    Ok(Applied {
        conflist: target,
        written: stamp.is_some(),
        stamp,
        converted_from: Some(primary),
    })
}

fn write(path: &Path, conf: &Map<String, Value>, mode: u32) -> Result<files::Stamp, InstallError> {
    files::write_atomic(path, &conflist::render(conf), mode)
        .map_err(|e| InstallError::io("cannot write", path, e))
}

/// What [`remove`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Removed {
    /// Lists our entry was taken out of.
    pub updated: Vec<PathBuf>,
    /// Lists that held nothing but our entry, deleted (an empty list is invalid for libcni).
    pub deleted: Vec<PathBuf>,
}

/// Takes our entry out of every configuration file of `dir`, not only the primary: after a
/// primary change our entry can sit in a file that no longer sorts first.
///
/// A list made from a single-plugin `.conf` stays a one-plugin `.conflist`: the runtime runs
/// it exactly like the `.conf`, and nothing records whether the list was once a `.conf` or
/// was written that way by its owner, so "restoring" could only guess.
pub fn remove(dir: &Path) -> Result<Removed, InstallError> {
    files::clean_stale_temps(dir, files::STALE_TEMP_AGE);
    let mut done = Removed::default();
    for path in candidates(dir)? {
        let conf = match load(&path) {
            Ok(Some(c)) => c,
            Ok(None) => continue,
            // Someone else's unreadable file is not ours to judge, and cannot hold our entry
            // in any way the runtime would use.
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "skipped while uninstalling");
                continue;
            }
        };
        let mode = mode_of(&path);
        let Some(rest) = conflist::unchain(conf) else {
            continue;
        };
        if conflist::plugin_count(&rest) == 0 {
            files::remove_if_exists(&path)
                .map_err(|e| InstallError::io("cannot remove", &path, e))?;
            done.deleted.push(path);
        } else {
            write(&path, &rest, mode)?;
            done.updated.push(path);
        }
    }
    Ok(done)
}

//! Running kernel I/O inside a target network namespace.
//!
//! `setns` changes only the calling thread, and a netlink socket stays in the namespace it
//! was created in. So a namespace switch happens on a dedicated thread that is created for it
//! and ends with it ([`Netns::run`]): no thread of the process is left in another namespace.
//!
//! The one exception is [`Netns::enter_for_good`], for the last namespace operation of a
//! one-shot process (the command line's `apply`, a CNI ADD): the calling thread itself
//! enters the namespace and stays there until the process exits. A thread made for it cost
//! that process ≈ 0.2 ms of a 1.7 ms apply (its creation, a 2 MiB stack and a second malloc
//! arena to fault in, its exit, the cross-CPU wake-up; README, "Measured"), for nothing: it
//! would only be waited for. What such a process does after the operation does not depend on
//! the network namespace: it writes to descriptors it already holds (stdout, stderr, a log
//! file) and the CNI plugin connects to the node agent's Unix socket by its path (path names
//! are resolved in the mount namespace; only abstract Unix addresses belong to a network
//! namespace). The handle is consumed; a caller must not reach the network after it (no API
//! server call, no DNS): those happen before, in the host's namespace.

use nix::sched::{setns, CloneFlags};
use std::fs::File;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Why a namespace could not be used.
#[derive(Debug, Error)]
pub enum NetnsError {
    /// `--netns` is neither a path nor a valid name.
    #[error("invalid value {0:?} for --netns: a name must not contain '/', or give a path")]
    InvalidName(String),
    /// The namespace file could not be opened.
    #[error("network namespace {arg:?} not found ({path}): {source}")]
    NotFound {
        /// What the user gave.
        arg: String,
        /// The path it resolved to.
        path: String,
        /// Why it could not be opened.
        source: std::io::Error,
    },
    /// The path exists but is not a network namespace (a FIFO, a file, another namespace).
    #[error("{path} is not a network namespace: it is {what}")]
    NotANetns {
        /// The path.
        path: String,
        /// What it is instead (`a FIFO`, `a directory`, `a mount namespace`, …).
        what: String,
    },
    /// `setns` refused it.
    #[error("cannot enter the network namespace {path}: {}", enter_hint(*.source))]
    Enter {
        /// The namespace path.
        path: String,
        /// `setns`' errno.
        source: nix::Error,
    },
    /// The thread running inside the namespace panicked.
    #[error("the namespace worker thread panicked")]
    Panicked,
}

/// `setns`' error in words: `EPERM` means the capability is missing, not a bad path.
fn enter_hint(e: nix::Error) -> String {
    match e {
        nix::Error::EPERM => "not permitted: entering a network namespace needs CAP_SYS_ADMIN \
                              (run as root)"
            .to_string(),
        other => other.to_string(),
    }
}

/// `NS_GET_NSTYPE` (`_IO(0xb7, 0x3)` in `linux/nsfs.h`): the namespace type of an nsfs file.
const NS_GET_NSTYPE: libc::c_ulong = 0xb703;

/// What the opened file is when it is not a network namespace, in words; `None` when it is.
fn not_a_netns(file: &File) -> Option<String> {
    // SAFETY: an ioctl without argument on a valid descriptor.
    let kind = unsafe { libc::ioctl(file.as_raw_fd(), NS_GET_NSTYPE as _) };
    if kind >= 0 {
        return match kind {
            libc::CLONE_NEWNET => None,
            libc::CLONE_NEWNS => Some("a mount namespace".into()),
            libc::CLONE_NEWPID => Some("a PID namespace".into()),
            libc::CLONE_NEWUTS => Some("a UTS namespace".into()),
            libc::CLONE_NEWIPC => Some("an IPC namespace".into()),
            libc::CLONE_NEWUSER => Some("a user namespace".into()),
            libc::CLONE_NEWCGROUP => Some("a cgroup namespace".into()),
            other => Some(format!("a namespace of type {other:#x}")),
        };
    }
    let ft = file.metadata().ok()?.file_type();
    Some(
        if ft.is_fifo() {
            "a FIFO"
        } else if ft.is_dir() {
            "a directory"
        } else if ft.is_file() {
            "a regular file"
        } else if ft.is_socket() {
            "a socket"
        } else if ft.is_char_device() || ft.is_block_device() {
            "a device"
        } else {
            "not a namespace file"
        }
        .to_string(),
    )
}

/// Where `ip netns` keeps named namespaces.
pub const NAMED_NETNS_DIR: &str = "/var/run/netns";

/// `--netns` takes a path (`/var/run/netns/x`, `/proc/PID/ns/net`) or a name as `ip netns`
/// shows it.
pub fn resolve(arg: &str) -> Result<PathBuf, NetnsError> {
    if arg.contains('/') {
        return Ok(PathBuf::from(arg));
    }
    if arg.is_empty() || arg == "." || arg == ".." {
        return Err(NetnsError::InvalidName(arg.to_string()));
    }
    Ok(Path::new(NAMED_NETNS_DIR).join(arg))
}

/// An opened namespace handle: opening early means a missing namespace is reported before
/// anything else happens.
pub struct Netns {
    file: File,
    path: String,
}

impl Netns {
    /// Opens a namespace given as a path or a name.
    pub fn open(arg: &str) -> Result<Netns, NetnsError> {
        let path = resolve(arg)?;
        // Non-blocking: opening a FIFO for reading would otherwise wait for a writer forever.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY)
            .open(&path)
            .map_err(|source| NetnsError::NotFound {
                arg: arg.to_string(),
                path: path.display().to_string(),
                source,
            })?;
        let path = path.display().to_string();
        if let Some(what) = not_a_netns(&file) {
            return Err(NetnsError::NotANetns { path, what });
        }
        Ok(Netns { file, path })
    }

    /// The namespace's path.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The namespace's nsfs identity (device, inode) as opened: two handles with the same
    /// identity are the same namespace.
    pub fn identity(&self) -> std::io::Result<(u64, u64)> {
        use std::os::unix::fs::MetadataExt;
        let m = self.file.metadata()?;
        Ok((m.dev(), m.ino()))
    }

    /// The addresses of the namespace's interfaces (`getifaddrs` on a namespace thread), in
    /// the kernel's order: IPv4 first.
    pub fn addresses(&self) -> std::io::Result<Vec<IpAddr>> {
        self.run(interface_addresses)
            .map_err(std::io::Error::other)?
    }

    /// Moves the calling thread into this namespace for the rest of the process, then runs
    /// `f` there. Only for the last namespace operation of a one-shot process, whose thread
    /// afterwards writes its answer and exits (see the module's notes); everywhere else,
    /// [`Netns::run`]. When `setns` fails the thread is still where it was.
    pub fn enter_for_good<T>(self, f: impl FnOnce() -> T) -> Result<T, NetnsError> {
        setns(&self.file, CloneFlags::CLONE_NEWNET).map_err(|source| NetnsError::Enter {
            path: self.path.clone(),
            source,
        })?;
        Ok(f())
    }

    /// Runs `f` on a fresh thread that has entered this namespace; the thread ends with `f`.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T, NetnsError> {
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    setns(&self.file, CloneFlags::CLONE_NEWNET).map_err(|source| {
                        NetnsError::Enter {
                            path: self.path.clone(),
                            source,
                        }
                    })?;
                    Ok(f())
                })
                .join()
                .map_err(|_| NetnsError::Panicked)?
        })
    }
}

/// The calling thread's namespace's interface addresses.
fn interface_addresses() -> std::io::Result<Vec<IpAddr>> {
    let mut out = Vec::new();
    // SAFETY: getifaddrs/freeifaddrs pair; every pointer is checked before use.
    unsafe {
        let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
        if libc::getifaddrs(&mut head) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut cur = head;
        while !cur.is_null() {
            let a = (*cur).ifa_addr;
            if !a.is_null() {
                match (*a).sa_family as i32 {
                    libc::AF_INET => {
                        let s = &*(a as *const libc::sockaddr_in);
                        out.push(IpAddr::from(u32::from_be(s.sin_addr.s_addr).to_be_bytes()));
                    }
                    libc::AF_INET6 => {
                        let s = &*(a as *const libc::sockaddr_in6);
                        out.push(IpAddr::from(s.sin6_addr.s6_addr));
                    }
                    _ => {}
                }
            }
            cur = (*cur).ifa_next;
        }
        libc::freeifaddrs(head);
    }
    Ok(out)
}

//! Keeping the node configured: inotify-driven repair until SIGTERM/SIGINT.
//!
//! Three directories are watched (directories, not files: files get replaced by rename, and a
//! watch on a file follows the old inode into oblivion):
//! * the CNI configuration directory: the primary CNI (re)writes its configuration — often
//!   dropping our entry — or appears for the first time; someone deletes our kubeconfig;
//! * the service account directory: kubelet rotates the projected token by swapping the
//!   `..data` symlink, which shows as a rename in that directory;
//! * the CNI bin directory: our binary is replaced or removed.
//!
//! Events are debounced (a primary writing its file in several steps causes one repair, after
//! it is done) and events caused by our own writes are recognised by the file's stamp and
//! dropped, so a repair does not trigger another. The thread blocks in `poll(2)` on the
//! inotify fd, a signalfd and the [`Stopper`]'s socket: no timer runs unless a retry is due.

use super::confdir;
use super::error::InstallError;
use super::files::{self, Stamp};
use super::kubeconfig::KUBECONFIG_FILE;
use super::{install_binary, install_conflist, install_kubeconfig, InstallOptions, BINARY_NAME};
use nix::errno::Errno;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, InotifyEvent, WatchDescriptor};
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Quiet time after the last event before repairing.
const DEBOUNCE: Duration = Duration::from_millis(100);
/// A continuous stream of events cannot postpone a repair longer than this.
const MAX_DELAY: Duration = Duration::from_secs(1);
/// Retry delays after a failed pass (doubling).
const RETRY_MIN: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// Ends [`run_until`] from another thread (tests, or an embedding program) without a signal.
/// Clones share the state; once stopped, it stays stopped.
#[derive(Clone, Debug)]
pub struct Stopper {
    inner: Arc<StopInner>,
}

#[derive(Debug)]
struct StopInner {
    stopped: AtomicBool,
    /// A socket pair rather than only the flag: a byte on `tx` wakes the `poll` on `rx` at
    /// once, without a periodic check.
    tx: UnixStream,
    rx: UnixStream,
}

impl Stopper {
    /// A stopper that has not been stopped.
    pub fn new() -> Result<Stopper, InstallError> {
        let (tx, rx) =
            UnixStream::pair().map_err(|e| InstallError::watch("create a socket pair", e))?;
        for s in [&tx, &rx] {
            s.set_nonblocking(true)
                .map_err(|e| InstallError::watch("configure a socket pair", e))?;
        }
        Ok(Stopper {
            inner: Arc::new(StopInner {
                stopped: AtomicBool::new(false),
                tx,
                rx,
            }),
        })
    }

    /// Asks [`run_until`] to finish (as SIGTERM would: clean up if asked to, then return).
    pub fn stop(&self) {
        self.inner.stopped.store(true, Ordering::SeqCst);
        // A full buffer means a wake-up is already pending; nothing else can fail here.
        let _ = (&self.inner.tx).write(&[1]);
    }

    /// Whether [`Stopper::stop`] was called.
    pub fn is_stopped(&self) -> bool {
        self.inner.stopped.load(Ordering::SeqCst)
    }
}

/// SIGTERM and SIGINT, blocked in this thread and read from a signalfd; the previous mask is
/// restored on drop.
struct Signals {
    fd: SignalFd,
    old: SigSet,
}

impl Signals {
    fn take() -> Result<Signals, InstallError> {
        let mut mask = SigSet::empty();
        mask.add(Signal::SIGTERM);
        mask.add(Signal::SIGINT);
        let old = mask
            .thread_swap_mask(SigmaskHow::SIG_BLOCK)
            .map_err(|e| InstallError::watch("block SIGTERM/SIGINT", e))?;
        let fd = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
            .map_err(|e| {
                let _ = old.thread_set_mask();
                InstallError::watch("create a signalfd", e)
            })?;
        Ok(Signals { fd, old })
    }
}

impl Drop for Signals {
    fn drop(&mut self) {
        let _ = self.old.thread_set_mask();
    }
}

/// Which steps of a pass must run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Steps {
    binary: bool,
    kubeconfig: bool,
    conflist: bool,
}

impl Steps {
    const ALL: Steps = Steps {
        binary: true,
        kubeconfig: true,
        conflist: true,
    };

    fn any(self) -> bool {
        self.binary || self.kubeconfig || self.conflist
    }

    fn add(&mut self, o: Steps) {
        self.binary |= o.binary;
        self.kubeconfig |= o.kubeconfig;
        self.conflist |= o.conflist;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Conf,
    Bin,
    ServiceAccount,
}

const WATCH_FLAGS: AddWatchFlags = AddWatchFlags::IN_CREATE
    .union(AddWatchFlags::IN_MODIFY)
    .union(AddWatchFlags::IN_CLOSE_WRITE)
    .union(AddWatchFlags::IN_MOVED_TO)
    .union(AddWatchFlags::IN_MOVED_FROM)
    .union(AddWatchFlags::IN_DELETE)
    .union(AddWatchFlags::IN_ATTRIB)
    .union(AddWatchFlags::IN_DELETE_SELF)
    .union(AddWatchFlags::IN_MOVE_SELF)
    .union(AddWatchFlags::IN_ONLYDIR);

struct Watcher<'a> {
    opts: &'a InstallOptions,
    inotify: Inotify,
    watches: Vec<(WatchDescriptor, Role)>,
    /// Directories whose watch is gone (removed, or not there yet): re-added on every pass.
    lost: Vec<Role>,
    /// The stamp of every file we wrote or removed, as we left it.
    own: HashMap<PathBuf, Option<Stamp>>,
}

impl<'a> Watcher<'a> {
    fn new(opts: &'a InstallOptions) -> Result<Watcher<'a>, InstallError> {
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
            .map_err(|e| InstallError::watch("initialise inotify", e))?;
        let mut w = Watcher {
            opts,
            inotify,
            watches: Vec::new(),
            lost: vec![Role::Conf, Role::Bin, Role::ServiceAccount],
            own: HashMap::new(),
        };
        w.rewatch();
        Ok(w)
    }

    fn dir(&self, role: Role) -> &'a Path {
        match role {
            Role::Conf => &self.opts.cni_conf_dir,
            Role::Bin => &self.opts.cni_bin_dir,
            Role::ServiceAccount => &self.opts.service_account_dir,
        }
    }

    /// Adds the missing watches. Our two host directories are created if absent; the service
    /// account directory is only waited for (its absence fails the kubeconfig step).
    fn rewatch(&mut self) {
        let lost = std::mem::take(&mut self.lost);
        for role in lost {
            let dir = self.dir(role);
            if role != Role::ServiceAccount {
                let _ = std::fs::create_dir_all(dir);
            }
            match self.inotify.add_watch(dir, WATCH_FLAGS) {
                Ok(wd) => self.watches.push((wd, role)),
                Err(e) => {
                    tracing::debug!(dir = %dir.display(), error = %e, "cannot watch yet");
                    self.lost.push(role);
                }
            }
        }
    }

    /// Records a file as we wrote it (`Some`) or removed it (`None`). Only stamps taken from
    /// our own writes are recorded: a stat after the fact could capture someone else's
    /// change and hide it. Files we found up to date are not recorded; an event for them
    /// costs a pass that writes nothing.
    fn remember(&mut self, path: &Path, stamp: Option<Stamp>) {
        self.own.insert(path.to_path_buf(), stamp);
    }

    fn is_own(&self, path: &Path) -> bool {
        self.own.get(path).is_some_and(|s| *s == files::stamp(path))
    }

    /// The steps an event calls for.
    fn classify(&mut self, ev: &InotifyEvent) -> Steps {
        if ev.mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
            tracing::warn!("inotify queue overflowed; checking everything");
            return Steps::ALL;
        }
        let roles: Vec<Role> = self
            .watches
            .iter()
            .filter(|(wd, _)| *wd == ev.wd)
            .map(|(_, r)| *r)
            .collect();
        if ev.mask.contains(AddWatchFlags::IN_IGNORED) {
            // The directory went away (or was moved): watch it again and check everything.
            self.watches.retain(|(wd, _)| *wd != ev.wd);
            self.lost.extend(roles);
            return Steps::ALL;
        }
        let mut steps = Steps::default();
        let Some(name) = ev.name.as_deref() else {
            return steps;
        };
        if files::is_temp_name(name) {
            return steps;
        }
        for role in roles {
            let path = self.dir(role).join(name);
            match role {
                Role::ServiceAccount => steps.kubeconfig = true,
                Role::Bin if name == OsStr::new(BINARY_NAME) => {
                    steps.binary |= !self.is_own(&path);
                }
                Role::Conf if name == OsStr::new(KUBECONFIG_FILE) => {
                    steps.kubeconfig |= !self.is_own(&path);
                }
                Role::Conf if confdir::is_cni_name(name) => {
                    steps.conflist |= !self.is_own(&path);
                }
                Role::Bin | Role::Conf => {}
            }
        }
        steps
    }

    /// Reads every queued event and returns the steps they call for.
    fn drain(&mut self) -> Result<Steps, InstallError> {
        let mut steps = Steps::default();
        loop {
            match self.inotify.read_events() {
                Ok(events) if events.is_empty() => break,
                Ok(events) => {
                    for ev in &events {
                        let s = self.classify(ev);
                        if s.any() {
                            tracing::debug!(event = ?ev, "change");
                        }
                        steps.add(s);
                    }
                }
                Err(Errno::EAGAIN) => break,
                Err(Errno::EINTR) => {}
                Err(e) => return Err(InstallError::watch("read inotify events", e)),
            }
        }
        Ok(steps)
    }

    /// Runs the pending steps in install order; a step that succeeds is cleared. Stops at the
    /// first failure, so the configuration is never written ahead of its binary or kubeconfig.
    fn run_steps(&mut self, pending: &mut Steps) -> Result<(), InstallError> {
        let opts = self.opts;
        if pending.binary {
            if let (_, Some(stamp)) = install_binary(opts)? {
                self.remember(&opts.installed_binary(), Some(stamp));
            }
            pending.binary = false;
        }
        if pending.kubeconfig {
            if let (_, Some(stamp)) = install_kubeconfig(opts)? {
                self.remember(&opts.kubeconfig_path(), Some(stamp));
            }
            pending.kubeconfig = false;
        }
        if pending.conflist {
            let applied = install_conflist(opts)?;
            if let Some(stamp) = applied.stamp {
                self.remember(&applied.conflist, Some(stamp));
            }
            if let Some(from) = &applied.converted_from {
                self.remember(from, None);
            }
            pending.conflist = false;
        }
        Ok(())
    }
}

/// `poll(2)` for readability; `None` waits forever. An interrupted call reports nothing ready.
fn wait(fds: &[BorrowedFd<'_>], timeout: Option<Duration>) -> Result<Vec<bool>, InstallError> {
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|fd| libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // Rounded up: waking a little early would find nothing due and spin until it is.
    let ms = timeout.map_or(-1, |d| {
        libc::c_int::try_from(d.as_nanos().div_ceil(1_000_000)).unwrap_or(libc::c_int::MAX)
    });
    // SAFETY: `pfds` is a live, exclusively borrowed array of `pfds.len()` pollfd structs for
    // the whole call, and each descriptor in it stays open through the borrow in `fds`.
    let n = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, ms) };
    if n < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok(vec![false; fds.len()]);
        }
        return Err(InstallError::watch("poll", e));
    }
    Ok(pfds.iter().map(|p| p.revents != 0).collect())
}

fn set_ready(opts: &InstallOptions, ready: bool) -> Result<(), InstallError> {
    let Some(path) = &opts.ready_file else {
        return Ok(());
    };
    if ready {
        files::write_atomic(path, b"ready\n", 0o644)
            .map(drop)
            .map_err(|e| InstallError::io("cannot write the ready file", path, e))
    } else {
        files::remove_if_exists(path)
            .map(drop)
            .map_err(|e| InstallError::io("cannot remove the ready file", path, e))
    }
}

fn retry_delay(failures: u32) -> Duration {
    RETRY_MIN
        .saturating_mul(1 << failures.saturating_sub(1).min(5))
        .min(RETRY_MAX)
}

/// Installs, then keeps the node configured until SIGTERM/SIGINT or `stop`; the loop behind
/// [`super::run`] (which ignores `once`: that is `run`'s business).
///
/// * Before the first complete pass, an error that waiting cannot fix (see
///   [`InstallError::is_transient`]) is returned; a missing or half-written primary
///   configuration is waited for.
/// * After it, every failure is logged and retried (on the next event, or after 1 s doubling
///   to 30 s), and the ready file is removed until a pass succeeds again.
/// * On the way out: the ready file is removed, and with `cleanup_on_exit` the plugin is
///   uninstalled.
///
/// SIGTERM/SIGINT are blocked in the calling thread while this runs (and taken from a
/// signalfd); the previous mask is restored before it returns.
pub fn run_until(opts: &InstallOptions, stop: &Stopper) -> Result<(), InstallError> {
    opts.plugin_entry()?;
    // A ready file left by a previous (crashed) run must not claim anything yet.
    set_ready(opts, false)?;
    // Held until we return, so that a second SIGTERM during the cleanup below is queued
    // rather than killing us half-way through an uninstall.
    let signals = Signals::take()?;
    let served = serve(opts, stop, &signals);
    // Whatever ended the loop, the node is no longer looked after.
    let unready = set_ready(opts, false);
    let reason = served?;
    unready?;
    tracing::info!(reason = %reason, "stopping");
    if opts.cleanup_on_exit {
        super::uninstall(opts)?;
    }
    Ok(())
}

/// The loop of [`run_until`]; returns why it stopped.
fn serve(opts: &InstallOptions, stop: &Stopper, signals: &Signals) -> Result<String, InstallError> {
    // Watches first, so that nothing happening during the first pass is missed.
    let mut watcher = Watcher::new(opts)?;
    let mut state = ServeState {
        pending: Steps::ALL,
        due: Some(Instant::now()),
        burst_start: None,
        failures: 0,
        configured: false,
        ever_configured: false,
        last_error: String::new(),
    };
    loop {
        if let Some(reason) = state.wait(stop, signals, &mut watcher)? {
            return Ok(reason);
        }
        if state.due.is_none_or(|d| d > Instant::now()) {
            continue;
        }
        state.burst_start = None;
        watcher.rewatch();
        let result = watcher.run_steps(&mut state.pending);
        state.after_pass(opts, &watcher, result)?;
    }
}

/// What [`serve`] carries from one turn of its loop to the next.
struct ServeState {
    /// Steps to run in the next pass.
    pending: Steps,
    /// When the next pass is due (`None`: only on an event).
    due: Option<Instant>,
    /// When the current burst of events began (passes wait for it to settle, within limits).
    burst_start: Option<Instant>,
    /// Failed passes in a row.
    failures: u32,
    /// The last pass succeeded (the ready file exists).
    configured: bool,
    /// A pass has succeeded at some point.
    ever_configured: bool,
    /// The last failure logged, so that a repeated one is logged at debug level.
    last_error: String,
}

impl ServeState {
    /// Waits for a signal, a stop, a watch event or the due time; `Some(reason)` to stop.
    fn wait(
        &mut self,
        stop: &Stopper,
        signals: &Signals,
        watcher: &mut Watcher<'_>,
    ) -> Result<Option<String>, InstallError> {
        if stop.is_stopped() {
            return Ok(Some("stop requested".into()));
        }
        let timeout = self
            .due
            .map(|d| d.saturating_duration_since(Instant::now()));
        let ready = wait(
            &[
                signals.fd.as_fd(),
                stop.inner.rx.as_fd(),
                watcher.inotify.as_fd(),
            ],
            timeout,
        )?;
        if ready[0] {
            if let Ok(Some(info)) = signals.fd.read_signal() {
                let name = i32::try_from(info.ssi_signo)
                    .ok()
                    .and_then(|n| Signal::try_from(n).ok())
                    .map_or_else(|| info.ssi_signo.to_string(), |s| s.as_str().to_string());
                return Ok(Some(format!("received {name}")));
            }
        }
        if ready[1] || stop.is_stopped() {
            return Ok(Some("stop requested".into()));
        }
        if ready[2] {
            let steps = watcher.drain()?;
            if steps.any() {
                self.pending.add(steps);
                let now = Instant::now();
                let start = *self.burst_start.get_or_insert(now);
                self.due = Some((now + DEBOUNCE).min(start + MAX_DELAY));
            }
        }
        Ok(None)
    }

    /// Books a pass's outcome: the ready file, the next due time, the log. An error is
    /// returned only when it is permanent and no pass has ever succeeded.
    fn after_pass(
        &mut self,
        opts: &InstallOptions,
        watcher: &Watcher<'_>,
        result: Result<(), InstallError>,
    ) -> Result<(), InstallError> {
        match result {
            Ok(()) => {
                self.failures = 0;
                self.due = None;
                self.last_error.clear();
                if !watcher.lost.is_empty() {
                    // A directory is still unwatched: look again later rather than go blind.
                    self.pending = Steps::ALL;
                    self.due = Some(Instant::now() + RETRY_MIN);
                }
                if !self.configured {
                    set_ready(opts, true)?;
                    self.configured = true;
                    self.ever_configured = true;
                    tracing::info!("node configured; watching for changes");
                }
            }
            Err(e) if !self.ever_configured && !e.is_transient() => return Err(e),
            Err(e) => {
                self.failures += 1;
                self.due = Some(Instant::now() + retry_delay(self.failures));
                if self.configured {
                    set_ready(opts, false)?;
                    self.configured = false;
                }
                let msg = e.to_string();
                if msg != self.last_error {
                    tracing::warn!(error = %msg, "node not configured; retrying on change or in a while");
                    self.last_error = msg;
                } else {
                    tracing::debug!(error = %msg, "still not configured");
                }
            }
        }
        Ok(())
    }
}

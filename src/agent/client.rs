//! The plugin's side of the agent socket: std only (a Unix socket and serde_json), so the
//! per-pod process stays as small and quick to start as before.
//!
//! * [`lookup`] asks for a pod under a short budget: connecting is non-blocking (a missing
//!   socket or a full backlog fails at once), the answer must arrive within
//!   [`ANSWER_BUDGET`] (the agent's own bounded wait plus a margin). Anything but a pod with
//!   the right namespace, name and UID is a [`Miss`], and the caller asks the API server.
//! * [`send_after`] hands the agent the invocation's report and log lines once the runtime
//!   has its answer: one non-blocking connect and one write with a tiny timeout, no reply
//!   awaited, every failure ignored.

use super::protocol::{Answer, Request, MAX_LINE};
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;
use thiserror::Error;

/// How long the plugin waits for the agent's answer to a pod lookup: the agent's bounded
/// wait for the watch ([`AGENT_WAIT`]) plus a margin.
pub const ANSWER_BUDGET: Duration = Duration::from_millis(750);

/// How long the agent waits for a pod it does not (yet) have with the requested UID.
pub const AGENT_WAIT: Duration = Duration::from_millis(500);

/// How long a fire-and-forget write may block.
pub const REPORT_BUDGET: Duration = Duration::from_millis(5);

/// Why the cache gave no pod; the plugin then asks the API server.
#[derive(Debug, Error)]
pub enum Miss {
    /// No agent listening (no socket, refused, backlog full).
    #[error("no agent at {0}")]
    NoAgent(String),
    /// The agent did not answer within the budget, or the connection failed mid-way.
    #[error("the agent did not answer: {0}")]
    Io(String),
    /// The agent does not have the pod with that UID.
    #[error("the agent does not know the pod")]
    Unknown,
    /// An answer that is not a valid one, or a pod that is not the one asked for.
    #[error("malformed answer from the agent: {0}")]
    Malformed(String),
}

/// Connects without blocking: a Unix socket connect either completes at once or fails
/// (`EAGAIN` when the agent's backlog is full), so no time is spent on a stuck agent.
fn connect(path: &Path) -> std::io::Result<UnixStream> {
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: a zeroed sockaddr_un is valid; the path is copied with its length checked.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(std::io::Error::from_raw_os_error(libc::ENAMETOOLONG));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    // SAFETY: plain socket(2); the descriptor is owned right away.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            0,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor we own.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len();
    // SAFETY: addr is a valid sockaddr_un of at least `len` bytes.
    let rc = unsafe {
        libc::connect(
            fd,
            &addr as *const libc::sockaddr_un as *const libc::sockaddr,
            len as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let stream = UnixStream::from(owned);
    stream.set_nonblocking(false)?;
    Ok(stream)
}

/// Asks the agent for pod `namespace/name` with `uid`.
pub fn lookup(socket: &Path, namespace: &str, name: &str, uid: &str) -> Result<Value, Miss> {
    let mut stream =
        connect(socket).map_err(|e| Miss::NoAgent(format!("{}: {e}", socket.display())))?;
    let io = |e: std::io::Error| Miss::Io(e.to_string());
    stream.set_read_timeout(Some(ANSWER_BUDGET)).map_err(io)?;
    stream.set_write_timeout(Some(ANSWER_BUDGET)).map_err(io)?;
    let req = Request::Pod {
        namespace: namespace.into(),
        name: name.into(),
        uid: uid.into(),
    };
    stream
        .write_all(format!("{}\n", req.to_line()).as_bytes())
        .map_err(io)?;
    let mut line = String::new();
    BufReader::new((&stream).take(MAX_LINE as u64))
        .read_line(&mut line)
        .map_err(io)?;
    if !line.ends_with('\n') {
        return Err(Miss::Io(
            "the agent closed the connection without a whole answer".into(),
        ));
    }
    match Answer::parse(line.trim_end()) {
        Ok(Answer::Pod(pod)) => check_identity(pod, namespace, name, uid),
        Ok(Answer::Unknown) => Err(Miss::Unknown),
        Ok(Answer::Error(e)) => Err(Miss::Malformed(format!(
            "the agent refused the request: {e}"
        ))),
        Err(e) => Err(Miss::Malformed(e.to_string())),
    }
}

/// The agent's pod must be the one asked for: a stale entry of a re-created pod is never used.
fn check_identity(pod: Value, namespace: &str, name: &str, uid: &str) -> Result<Value, Miss> {
    let meta = &pod["metadata"];
    let (ns, n, u) = (
        meta["namespace"].as_str(),
        meta["name"].as_str(),
        meta["uid"].as_str(),
    );
    if (ns, n, u) == (Some(namespace), Some(name), Some(uid)) {
        Ok(pod)
    } else {
        Err(Miss::Malformed(format!(
            "asked for {namespace}/{name} uid {uid}, got {}/{} uid {}",
            ns.unwrap_or("?"),
            n.unwrap_or("?"),
            u.unwrap_or("?")
        )))
    }
}

/// Sends `requests` to the agent, one line each, without waiting for anything; errors
/// (no agent, a full socket buffer) are ignored.
pub fn send_after(socket: &Path, requests: &[Request]) {
    let Ok(mut stream) = connect(socket) else {
        return;
    };
    if stream.set_write_timeout(Some(REPORT_BUDGET)).is_err() {
        return;
    }
    let mut text = String::new();
    for r in requests {
        text.push_str(&r.to_line());
        text.push('\n');
    }
    let _ = stream.write_all(text.as_bytes());
}

#[cfg(test)]
mod tests {
    /// A fresh directory with a listening socket `s.sock` in it.
    fn listening(tag: &str) -> (std::path::PathBuf, std::path::PathBuf, UnixListener) {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "mr-agent-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        ));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("s.sock");
        let _ = std::fs::remove_file(&path);
        let l = UnixListener::bind(&path).unwrap();
        (dir, path, l)
    }

    use super::*;
    use serde_json::json;
    use std::os::unix::net::UnixListener;

    fn serve_once(answer: &'static str) -> (std::path::PathBuf, std::thread::JoinHandle<String>) {
        let (dir, path, l) = listening("client");
        let h = std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            let mut line = String::new();
            BufReader::new(&s).read_line(&mut line).unwrap();
            (&s).write_all(answer.as_bytes()).unwrap();
            // Connected and answered: the directory is not needed any more.
            let _ = std::fs::remove_dir_all(&dir);
            line
        });
        (path, h)
    }

    #[test]
    fn a_missing_socket_is_no_agent() {
        let e = lookup(Path::new("/nonexistent/agent.sock"), "a", "b", "c").unwrap_err();
        assert!(matches!(e, Miss::NoAgent(_)), "{e}");
    }

    #[test]
    fn unknown_and_malformed_answers_are_misses() {
        let (p, h) = serve_once("{\"v\":1,\"unknown\":true}\n");
        assert!(matches!(lookup(&p, "a", "b", "c"), Err(Miss::Unknown)));
        let sent = h.join().unwrap();
        assert_eq!(
            Request::parse(sent.trim_end()).unwrap(),
            Request::Pod {
                namespace: "a".into(),
                name: "b".into(),
                uid: "c".into()
            }
        );
        let (p, h) = serve_once("{\"v\":1,\"pod\":{\"metadata\":{\"namespace\":\"a\",\"name\":\"b\",\"uid\":\"OLD\"}}}\n");
        assert!(matches!(lookup(&p, "a", "b", "c"), Err(Miss::Malformed(_))));
        h.join().unwrap();
        let (p, h) = serve_once(
            "{\"v\":1,\"pod\":{\"metadata\":{\"namespace\":\"a\",\"name\":\"b\",\"uid\":\"c\"}}}",
        );
        assert!(
            matches!(lookup(&p, "a", "b", "c"), Err(Miss::Io(_))),
            "no newline"
        );
        h.join().unwrap();
    }

    #[test]
    fn an_agent_that_never_answers_costs_the_budget_and_no_more() {
        let (dir, path, l) = listening("hang");
        let h = std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            std::thread::sleep(ANSWER_BUDGET * 2);
            drop(s);
        });
        let t = std::time::Instant::now();
        assert!(matches!(lookup(&path, "a", "b", "c"), Err(Miss::Io(_))));
        let took = t.elapsed();
        assert!(
            took >= ANSWER_BUDGET && took < ANSWER_BUDGET * 2,
            "{took:?}"
        );
        h.join().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_right_pod_is_returned() {
        let (p, h) = serve_once("{\"v\":1,\"pod\":{\"metadata\":{\"namespace\":\"a\",\"name\":\"b\",\"uid\":\"c\"},\"spec\":{}}}\n");
        let pod = lookup(&p, "a", "b", "c").unwrap();
        assert_eq!(pod["spec"], json!({}));
        h.join().unwrap();
    }
}

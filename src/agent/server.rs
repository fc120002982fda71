//! The agent's Unix socket (mode 0600): pod lookups from the cache, the plugin's reports
//! and log lines. See [`protocol`](super::protocol) for the messages.

use super::cache::PodCache;
use super::client::AGENT_WAIT;
use super::metrics::Metrics;
use super::protocol::{Answer, Request, MAX_LINE};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

/// Binds the socket at `path`: a stale socket file is replaced, the directory created, and
/// the socket made 0600 (root only: it hands out pod specs).
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Serves connections forever.
pub async fn serve(listener: UnixListener, cache: Arc<PodCache>, metrics: Arc<Metrics>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            continue;
        };
        let (cache, metrics) = (cache.clone(), metrics.clone());
        tokio::spawn(async move {
            let _ = connection(stream, &cache, &metrics).await;
        });
    }
}

/// One connection: any number of requests, one per line.
async fn connection(
    stream: UnixStream,
    cache: &PodCache,
    metrics: &Metrics,
) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read);
    let mut line = String::new();
    loop {
        line.clear();
        let n = (&mut lines)
            .take(MAX_LINE as u64)
            .read_line(&mut line)
            .await?;
        if n == 0 {
            return Ok(());
        }
        if !line.ends_with('\n') && n >= MAX_LINE {
            let answer = Answer::Error(format!("line longer than {MAX_LINE} bytes"));
            write
                .write_all(format!("{}\n", answer.to_line()).as_bytes())
                .await?;
            return Ok(());
        }
        if let Some(answer) = handle(line.trim_end(), cache, metrics).await {
            write
                .write_all(format!("{}\n", answer.to_line()).as_bytes())
                .await?;
        }
    }
}

/// One request; `None` for the messages that get no answer.
pub async fn handle(line: &str, cache: &PodCache, metrics: &Metrics) -> Option<Answer> {
    match Request::parse(line) {
        Ok(Request::Pod {
            namespace,
            name,
            uid,
        }) => {
            let pod = cache.get_wait(&namespace, &name, &uid, AGENT_WAIT).await;
            tracing::debug!(pod = %name, namespace = %namespace, found = pod.is_some(), "lookup");
            Some(match pod {
                Some(p) => Answer::Pod((*p).clone()),
                None => Answer::Unknown,
            })
        }
        Ok(Request::Report(r)) => {
            metrics.report(&r);
            None
        }
        Ok(Request::Log { line }) => {
            // The plugin's own formatted line, prefixed so `kubectl logs` tells them apart.
            eprintln!("plugin: {line}");
            None
        }
        Err(e) => Some(Answer::Error(e.to_string())),
    }
}

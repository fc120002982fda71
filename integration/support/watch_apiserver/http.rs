//! HTTP/1.1 for the test API server: a request's line, headers and body (by
//! `Content-Length`, or `Transfer-Encoding: chunked`), responses, and the Kubernetes
//! `Status` bodies of failures.

use serde_json::{json, Value};
use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};

/// One request as read off the connection.
pub(super) struct HttpRequest {
    pub method: String,
    /// Percent-decoded, without the query.
    pub path: String,
    /// As sent (still percent-encoded), without the `?`.
    pub query: String,
    pub content_type: Option<String>,
    pub body: Vec<u8>,
    /// `Connection: close`: the connection ends after the response.
    pub close: bool,
}

impl HttpRequest {
    /// The body as JSON: `None` when empty, `Err` when it is not JSON.
    pub fn json(&self) -> Result<Option<Value>, String> {
        if self.body.iter().all(u8::is_ascii_whitespace) {
            return Ok(None);
        }
        serde_json::from_slice(&self.body)
            .map(Some)
            .map_err(|e| format!("the request body is not JSON: {e}"))
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// More bytes into `buf` (a read timeout adds none); `false` at the end of the stream or
/// when the server stops.
fn fill<R: Read>(r: &mut R, buf: &mut Vec<u8>, stop: &AtomicBool) -> io::Result<bool> {
    if stop.load(Ordering::SeqCst) {
        return Ok(false);
    }
    crate::support::read_into(r, buf)
}

/// `%XX` and `+` decoded (query values); invalid escapes are kept as they are.
pub(super) fn percent_decode(s: &str, plus_is_space: bool) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match (b[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
                continue;
            }
            (b'+', _) if plus_is_space => out.push(b' '),
            (c, _) => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The next request on the connection; `None` when it ends (or the server stops) first.
pub(super) fn read_request<R: Read>(
    r: &mut R,
    buf: &mut Vec<u8>,
    stop: &AtomicBool,
) -> io::Result<Option<HttpRequest>> {
    let end = loop {
        if let Some(end) = find(buf, b"\r\n\r\n") {
            break end;
        }
        if !fill(r, buf, stop)? {
            return Ok(None);
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    buf.drain(..end + 4);
    let mut lines = head.split("\r\n");
    let mut start = lines.next().unwrap_or_default().split(' ');
    let method = start.next().unwrap_or_default().to_string();
    let target = start.next().unwrap_or_default();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let header = |name: &str| headers.iter().find(|(k, _)| k == name).map(|(_, v)| v);
    let chunked = header("transfer-encoding").is_some_and(|v| v.contains("chunked"));
    let length: usize = header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let body = if chunked {
        read_chunked(r, buf, stop)?
    } else {
        read_exactly(r, buf, length, stop)?
    };
    let Some(body) = body else {
        return Ok(None);
    };
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    Ok(Some(HttpRequest {
        method,
        path: percent_decode(path, false),
        query: query.to_string(),
        content_type: header("content-type").cloned(),
        body,
        close: header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close")),
    }))
}

fn read_exactly<R: Read>(
    r: &mut R,
    buf: &mut Vec<u8>,
    length: usize,
    stop: &AtomicBool,
) -> io::Result<Option<Vec<u8>>> {
    while buf.len() < length {
        if !fill(r, buf, stop)? {
            return Ok(None);
        }
    }
    Ok(Some(buf.drain(..length).collect()))
}

fn read_chunked<R: Read>(
    r: &mut R,
    buf: &mut Vec<u8>,
    stop: &AtomicBool,
) -> io::Result<Option<Vec<u8>>> {
    loop {
        if let Some((body, used)) = parse_chunked(buf)? {
            buf.drain(..used);
            return Ok(Some(body));
        }
        if !fill(r, buf, stop)? {
            return Ok(None);
        }
    }
}

/// A whole chunked body at the start of `buf` (chunk extensions and trailers skipped):
/// the body and the bytes it took, or `None` while incomplete.
pub(super) fn parse_chunked(buf: &[u8]) -> io::Result<Option<(Vec<u8>, usize)>> {
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_string());
    let (mut body, mut at) = (Vec::new(), 0);
    loop {
        let Some(nl) = find(&buf[at..], b"\r\n") else {
            return Ok(None);
        };
        let line = String::from_utf8_lossy(&buf[at..at + nl]).into_owned();
        let size_text = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| bad("chunk size"))?;
        at += nl + 2;
        if size == 0 {
            // Trailer lines, up to an empty one.
            loop {
                let Some(nl) = find(&buf[at..], b"\r\n") else {
                    return Ok(None);
                };
                at += nl + 2;
                if nl == 0 {
                    return Ok(Some((body, at)));
                }
            }
        }
        if buf.len() < at + size + 2 {
            return Ok(None);
        }
        if &buf[at + size..at + size + 2] != b"\r\n" {
            return Err(bad("chunk not followed by CRLF"));
        }
        body.extend_from_slice(&buf[at..at + size]);
        at += size + 2;
    }
}

/// A whole response with a JSON body.
pub(super) fn respond<W: Write>(w: &mut W, code: u16, body: &str) -> io::Result<()> {
    let head = format!(
        "HTTP/1.1 {code} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        generic(code, "").1,
        body.len()
    );
    w.write_all(head.as_bytes())?;
    w.write_all(body.as_bytes())?;
    w.flush()
}

/// A handler's answer: status code and JSON body.
pub(super) type Reply = (u16, String);

/// A failure `Status` (`kind: Status`, `status: Failure`).
pub(super) fn status(code: u16, reason: &str, message: &str, details: Value) -> Reply {
    let mut s = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code});
    if !details.is_null() {
        s["details"] = details;
    }
    (code, s.to_string())
}

/// The reason and message the API server's `NewGenericServerResponse` gives `code`
/// (`verb` decides 409: `AlreadyExists` for POST, else `Conflict`).
pub(super) fn generic(code: u16, verb: &str) -> (&'static str, &'static str) {
    match code {
        200..=299 => ("", "OK"),
        409 if verb == "POST" => ("AlreadyExists", "the server reported a conflict"),
        409 => ("Conflict", "the server reported a conflict"),
        404 => ("NotFound", "the server could not find the requested resource"),
        400 => ("BadRequest", "the server rejected our request for an unknown reason"),
        401 => ("Unauthorized", "the server has asked for the client to provide credentials"),
        403 => ("Forbidden", "forbidden"),
        405 => ("MethodNotAllowed", "the server does not allow this method on the requested resource"),
        410 => ("Expired", "the resource version is too old"),
        415 => ("UnsupportedMediaType", "the body of the request was in an unknown format"),
        422 => ("Invalid", "the server rejected our request due to an error in our request"),
        429 => ("TooManyRequests", "the server has received too many requests and has asked us to try again later"),
        503 => ("ServiceUnavailable", "the server is currently unable to handle the request"),
        504 => ("Timeout", "the server was unable to return a response in the time allotted, but may still be processing the request"),
        500..=599 => ("InternalError", "an error on the server has prevented the request from succeeding"),
        _ => ("Unknown", "the server responded with an unexpected status code"),
    }
}

/// [`generic`] as a `Status` reply.
pub(super) fn generic_status(code: u16, verb: &str) -> Reply {
    let (reason, message) = generic(code, verb);
    status(code, reason, message, json!({}))
}

/// `404 NotFound`: `<resource> "<name>" not found`.
pub(super) fn not_found(resource: &str, name: &str) -> Reply {
    status(
        404,
        "NotFound",
        &format!("{resource} \"{name}\" not found"),
        details(resource, name),
    )
}

/// `409 Conflict`: `Operation cannot be fulfilled on <resource> "<name>": <why>`.
pub(super) fn conflict(resource: &str, name: &str, why: &str) -> Reply {
    status(
        409,
        "Conflict",
        &format!("Operation cannot be fulfilled on {resource} \"{name}\": {why}"),
        details(resource, name),
    )
}

/// A Status's `details` for a resource (`pods`, `events.events.k8s.io`) and a name.
pub(super) fn details(resource: &str, name: &str) -> Value {
    let (kind, group) = resource.split_once('.').unwrap_or((resource, ""));
    let mut d = json!({"name": name, "kind": kind});
    if !group.is_empty() {
        d["group"] = json!(group);
    }
    d
}

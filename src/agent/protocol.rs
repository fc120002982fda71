//! The agent's socket protocol: line-delimited JSON, one object per line, every object
//! carrying the protocol version `"v": 1`.
//!
//! Requests (plugin → agent):
//! * `{"v":1,"op":"pod","namespace":NS,"name":NAME,"uid":UID}`: the pod, answered with
//!   `{"v":1,"pod":{…}}` only when the cached pod has that UID, else (after a bounded wait for
//!   the watch) `{"v":1,"unknown":true}`;
//! * `{"v":1,"op":"report","command":"ADD","result":"ok","duration_seconds":0.012,
//!   "lookup":"cache"}`: one finished CNI invocation, for the metrics; no answer;
//! * `{"v":1,"op":"log","line":"…"}`: one of the plugin's log lines; no answer.
//!
//! A request the agent cannot read is answered `{"v":1,"error":"…"}`; the plugin treats that,
//! like any answer it cannot read, as "no answer" and asks the API server.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use thiserror::Error;

/// The protocol version this build speaks.
pub const VERSION: u64 = 1;

/// The socket's default path (the plugin's `agent_socket`, the agent's `--socket`).
pub const DEFAULT_SOCKET: &str = "/var/run/mesh-redirect/agent.sock";

/// The longest line either side accepts (a pod object is a few KiB; huge ones exist).
pub const MAX_LINE: usize = 1 << 20;

/// A request to the agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
pub enum Request {
    /// Look a pod up in the cache.
    Pod {
        /// `K8S_POD_NAMESPACE`.
        namespace: String,
        /// `K8S_POD_NAME`.
        name: String,
        /// `K8S_POD_UID`: the answer is this pod or nothing.
        uid: String,
    },
    /// One finished CNI invocation.
    Report(Report),
    /// One log line of the plugin.
    Log {
        /// The line, without its newline.
        line: String,
    },
}

/// What the plugin reports after answering the runtime.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Report {
    /// `ADD`, `DEL` or `CHECK`.
    pub command: String,
    /// `ok` or `error`.
    pub result: String,
    /// Wall time from start to the flushed answer.
    pub duration_seconds: f64,
    /// Where the pod came from (`cache` or `api`), when it was looked up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lookup: Option<String>,
}

/// The agent's answer to a [`Request::Pod`].
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// The cached pod object, with the requested UID.
    Pod(Value),
    /// Not in the cache with that UID (after the bounded wait).
    Unknown,
    /// The agent could not read the request.
    Error(String),
}

/// Why a line is not a valid message.
#[derive(Debug, Error, PartialEq)]
pub enum ProtocolError {
    /// Not a JSON object.
    #[error("not a JSON object: {0}")]
    Json(String),
    /// `v` is missing or not [`VERSION`].
    #[error("unsupported protocol version {0} (this side speaks {VERSION})")]
    Version(String),
    /// A JSON object, but not one of the messages.
    #[error("not a valid message: {0}")]
    Shape(String),
}

/// Splits off and checks `"v"`; returns the rest of the object.
fn versioned(line: &str) -> Result<serde_json::Map<String, Value>, ProtocolError> {
    let mut m = match serde_json::from_str::<Value>(line) {
        Ok(Value::Object(m)) => m,
        Ok(other) => return Err(ProtocolError::Json(other.to_string())),
        Err(e) => return Err(ProtocolError::Json(e.to_string())),
    };
    match m.remove("v") {
        Some(Value::Number(n)) if n.as_u64() == Some(VERSION) => Ok(m),
        Some(v) => Err(ProtocolError::Version(v.to_string())),
        None => Err(ProtocolError::Version("(none)".into())),
    }
}

impl Request {
    /// The request as one line (no newline).
    pub fn to_line(&self) -> String {
        let mut v = serde_json::to_value(self).unwrap_or(Value::Null);
        if let Value::Object(m) = &mut v {
            m.insert("v".into(), json!(VERSION));
        }
        v.to_string()
    }

    /// Parses one line.
    pub fn parse(line: &str) -> Result<Request, ProtocolError> {
        let m = versioned(line)?;
        serde_json::from_value(Value::Object(m)).map_err(|e| ProtocolError::Shape(e.to_string()))
    }
}

impl Answer {
    /// The answer as one line (no newline).
    pub fn to_line(&self) -> String {
        match self {
            Answer::Pod(p) => json!({"v": VERSION, "pod": p}),
            Answer::Unknown => json!({"v": VERSION, "unknown": true}),
            Answer::Error(e) => json!({"v": VERSION, "error": e}),
        }
        .to_string()
    }

    /// Parses one line; a pod that is not an object is a [`ProtocolError::Shape`].
    pub fn parse(line: &str) -> Result<Answer, ProtocolError> {
        let mut m = versioned(line)?;
        if let Some(p) = m.remove("pod") {
            return match p {
                Value::Object(_) if m.is_empty() => Ok(Answer::Pod(p)),
                _ => Err(ProtocolError::Shape(
                    "\"pod\" must be the only object".into(),
                )),
            };
        }
        match (m.get("unknown"), m.get("error")) {
            (Some(Value::Bool(true)), None) if m.len() == 1 => Ok(Answer::Unknown),
            (None, Some(Value::String(e))) if m.len() == 1 => Ok(Answer::Error(e.clone())),
            _ => Err(ProtocolError::Shape(Value::Object(m).to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_with_the_version() {
        let reqs = [
            Request::Pod {
                namespace: "ns".into(),
                name: "p".into(),
                uid: "u-1".into(),
            },
            Request::Report(Report {
                command: "ADD".into(),
                result: "ok".into(),
                duration_seconds: 0.25,
                lookup: Some("cache".into()),
            }),
            Request::Log {
                line: "a \"quoted\" line".into(),
            },
        ];
        for r in reqs {
            let line = r.to_line();
            assert!(!line.contains('\n'), "{line}");
            assert!(line.contains("\"v\":1"), "{line}");
            assert_eq!(Request::parse(&line).unwrap(), r);
        }
    }

    #[test]
    fn the_documented_pod_request_parses() {
        let r = Request::parse(r#"{"v":1,"op":"pod","namespace":"a","name":"b","uid":"c"}"#);
        assert_eq!(
            r.unwrap(),
            Request::Pod {
                namespace: "a".into(),
                name: "b".into(),
                uid: "c".into()
            }
        );
    }

    #[test]
    fn bad_requests_are_refused() {
        for (line, want) in [
            ("nonsense", "not a JSON object"),
            ("[1]", "not a JSON object"),
            (r#"{"op":"pod"}"#, "version (none)"),
            (
                r#"{"v":2,"op":"pod","namespace":"a","name":"b","uid":"c"}"#,
                "version 2",
            ),
            (r#"{"v":1,"op":"pod","namespace":"a","name":"b"}"#, "uid"),
            (r#"{"v":1,"op":"dance"}"#, "dance"),
            (
                r#"{"v":1,"op":"pod","namespace":"a","name":"b","uid":"c","x":1}"#,
                "x",
            ),
        ] {
            let e = Request::parse(line).unwrap_err().to_string();
            assert!(e.contains(want), "{line}: {e}");
        }
    }

    #[test]
    fn answers_round_trip_and_malformed_ones_are_refused() {
        for a in [
            Answer::Pod(json!({"metadata": {"uid": "u"}})),
            Answer::Unknown,
            Answer::Error("bad".into()),
        ] {
            assert_eq!(Answer::parse(&a.to_line()).unwrap(), a);
        }
        assert_eq!(
            Answer::parse(r#"{"v":1,"unknown":true}"#).unwrap(),
            Answer::Unknown
        );
        for bad in [
            r#"{"v":1,"pod":"x"}"#,
            r#"{"v":1,"pod":{},"unknown":true}"#,
            r#"{"v":1,"unknown":false}"#,
            r#"{"v":1}"#,
            r#"{"v":3,"unknown":true}"#,
            r#"{"v":1,"unknown":true"#,
        ] {
            assert!(Answer::parse(bad).is_err(), "{bad}");
        }
    }
}

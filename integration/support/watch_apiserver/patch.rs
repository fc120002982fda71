//! The PATCH bodies the test API server understands, by `Content-Type`:
//! `application/merge-patch+json` (RFC 7386), `application/strategic-merge-patch+json`
//! (treated as a merge patch: right for labels, annotations and the lists Kubernetes
//! replaces, such as a node's taints; no `$patch` directives, no merging of lists by key),
//! and `application/json-patch+json` (RFC 6902: `add`, `remove`, `replace`, `test`, `move`,
//! `copy` on JSON pointers with `~0`/`~1` escapes and array indices, `-` to append).
//! A JSON patch applies whole or not at all.

use serde_json::{Map, Value};

/// Why a patch was not applied, as the API server answers it.
#[derive(Debug, PartialEq)]
pub(super) enum PatchError {
    /// 400 BadRequest: the body does not decode as a patch of its type.
    Bad(String),
    /// 422 Invalid: a JSON patch operation failed (a `test`, a missing path).
    Failed(String),
    /// 415 UnsupportedMediaType.
    Unsupported(String),
}

/// `target` with the patch `body` of media type `content_type` applied.
pub(super) fn apply(
    content_type: Option<&str>,
    target: &Value,
    body: &[u8],
) -> Result<Value, PatchError> {
    let media = content_type
        .unwrap_or_default()
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let patch = || -> Result<Value, PatchError> {
        serde_json::from_slice(body)
            .map_err(|e| PatchError::Bad(format!("error decoding patch: {e}")))
    };
    match media.as_str() {
        "application/merge-patch+json" | "application/strategic-merge-patch+json" => {
            let patch = patch()?;
            if !patch.is_object() {
                return Err(PatchError::Bad("a merge patch must be a JSON object".into()));
            }
            Ok(merge(target, &patch))
        }
        "application/json-patch+json" => json_patch(target, &patch()?),
        other => Err(PatchError::Unsupported(format!(
            "the body of the request was in an unknown format ({other:?}) - accepted media types include: \
             application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json"
        ))),
    }
}

/// RFC 7386 JSON merge patch.
pub(super) fn merge(target: &Value, patch: &Value) -> Value {
    let Value::Object(p) = patch else {
        return patch.clone();
    };
    let mut out = match target {
        Value::Object(t) => t.clone(),
        _ => Map::new(),
    };
    for (k, v) in p {
        if v.is_null() {
            out.remove(k);
        } else {
            let merged = merge(out.get(k).unwrap_or(&Value::Null), v);
            out.insert(k.clone(), merged);
        }
    }
    Value::Object(out)
}

fn failed(msg: String) -> PatchError {
    PatchError::Failed(msg)
}

/// RFC 6902 JSON patch, applied to a copy of `target`.
pub(super) fn json_patch(target: &Value, ops: &Value) -> Result<Value, PatchError> {
    let ops = ops
        .as_array()
        .ok_or_else(|| PatchError::Bad("a JSON patch must be a JSON array".into()))?;
    let mut doc = target.clone();
    for op in ops {
        let kind = op["op"].as_str().unwrap_or_default();
        let path = op["path"]
            .as_str()
            .ok_or_else(|| failed(format!("operation {op} has no path")))?;
        let value = || {
            op.get("value")
                .cloned()
                .ok_or_else(|| failed(format!("operation {op} has no value")))
        };
        let from = || {
            op["from"]
                .as_str()
                .ok_or_else(|| failed(format!("operation {op} has no from")))
        };
        match kind {
            "add" => add(&mut doc, path, value()?)?,
            "remove" => drop(remove(&mut doc, path)?),
            "replace" => {
                if get(&doc, path)?.is_none() {
                    return Err(failed(format!(
                        "replace operation does not apply: doc is missing key: {path}"
                    )));
                }
                replace(&mut doc, path, value()?)?;
            }
            "test" => test(&doc, path, &value()?)?,
            "move" => {
                let v = remove(&mut doc, from()?)?;
                add(&mut doc, path, v)?;
            }
            "copy" => {
                let v = get(&doc, from()?)?.cloned().ok_or_else(|| {
                    failed(format!(
                        "copy from a missing path: {}",
                        from().unwrap_or_default()
                    ))
                })?;
                add(&mut doc, path, v)?;
            }
            other => return Err(failed(format!("Unexpected kind: {other}"))),
        }
    }
    Ok(doc)
}

/// A JSON pointer's reference tokens, unescaped (`~1` → `/`, then `~0` → `~`).
pub(super) fn tokens(pointer: &str) -> Result<Vec<String>, PatchError> {
    if pointer.is_empty() {
        return Ok(vec![]);
    }
    let rest = pointer
        .strip_prefix('/')
        .ok_or_else(|| failed(format!("invalid JSON pointer: {pointer:?}")))?;
    Ok(rest
        .split('/')
        .map(|t| t.replace("~1", "/").replace("~0", "~"))
        .collect())
}

/// An array index token: digits without a leading zero.
fn index(token: &str) -> Option<usize> {
    let digits = !token.is_empty() && token.bytes().all(|b| b.is_ascii_digit());
    if !digits || (token.len() > 1 && token.starts_with('0')) {
        return None;
    }
    token.parse().ok()
}

fn child<'a>(v: &'a Value, token: &str) -> Option<&'a Value> {
    match v {
        Value::Object(m) => m.get(token),
        Value::Array(a) => index(token).and_then(|i| a.get(i)),
        _ => None,
    }
}

fn child_mut<'a>(v: &'a mut Value, token: &str) -> Option<&'a mut Value> {
    match v {
        Value::Object(m) => m.get_mut(token),
        Value::Array(a) => index(token).and_then(|i| a.get_mut(i)),
        _ => None,
    }
}

/// The value at `pointer` (`None` when any step is missing).
pub(super) fn get<'a>(doc: &'a Value, pointer: &str) -> Result<Option<&'a Value>, PatchError> {
    Ok(tokens(pointer)?.iter().try_fold(doc, |v, t| child(v, t)))
}

/// The container of `pointer`'s last token, and that token.
fn parent_mut<'a>(
    doc: &'a mut Value,
    pointer: &str,
) -> Result<(&'a mut Value, String), PatchError> {
    let mut toks = tokens(pointer)?;
    let last = toks
        .pop()
        .ok_or_else(|| failed("the whole document has no parent".into()))?;
    let mut v = doc;
    for t in &toks {
        v = child_mut(v, t).ok_or_else(|| failed(format!("doc is missing path: {pointer}")))?;
    }
    Ok((v, last))
}

fn add(doc: &mut Value, pointer: &str, value: Value) -> Result<(), PatchError> {
    if pointer.is_empty() {
        *doc = value;
        return Ok(());
    }
    let (parent, last) = parent_mut(doc, pointer)?;
    match parent {
        Value::Object(m) => {
            m.insert(last, value);
        }
        Value::Array(a) if last == "-" => a.push(value),
        Value::Array(a) => match index(&last).filter(|i| *i <= a.len()) {
            Some(i) => a.insert(i, value),
            None => {
                return Err(failed(format!(
                    "add operation: index out of bounds: {pointer}"
                )))
            }
        },
        _ => return Err(failed(format!("add operation: no container at {pointer}"))),
    }
    Ok(())
}

fn remove(doc: &mut Value, pointer: &str) -> Result<Value, PatchError> {
    let (parent, last) = parent_mut(doc, pointer)?;
    let removed = match parent {
        Value::Object(m) => m.remove(&last),
        Value::Array(a) => index(&last).filter(|i| *i < a.len()).map(|i| a.remove(i)),
        _ => None,
    };
    removed.ok_or_else(|| {
        failed(format!(
            "remove operation does not apply: doc is missing path: {pointer}"
        ))
    })
}

fn replace(doc: &mut Value, pointer: &str, value: Value) -> Result<(), PatchError> {
    let mut v = doc;
    for t in tokens(pointer)? {
        v = child_mut(v, &t).ok_or_else(|| failed(format!("doc is missing path: {pointer}")))?;
    }
    *v = value;
    Ok(())
}

/// `test`: the value at `pointer` equals `want`; as the API server's JSON patch library
/// (evanphx/json-patch v4) does it, a missing path passes a test for `null`.
fn test(doc: &Value, pointer: &str, want: &Value) -> Result<(), PatchError> {
    match get(doc, pointer)? {
        Some(got) if got == want => Ok(()),
        None if want.is_null() => Ok(()),
        _ => Err(failed(format!(
            "testing value {pointer} failed: test failed"
        ))),
    }
}

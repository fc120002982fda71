//! Chaining our plugin into the primary CNI's configuration: pure JSON, no I/O.
//!
//! The rules are istio-cni's (`cni/pkg/install/cniconfig.go`, `docs/istio-semantics.md` §8.2),
//! with three deliberate differences that keep the primary's configuration intact:
//! * A configuration with a top-level `type` is a single plugin, whatever the file's
//!   extension, and is wrapped into `{"cniVersion", "name", "plugins": [primary, ours]}`.
//!   The list keeps the network's own `name` (Istio renames it to `k8s-pod-network`, and
//!   `host-local` keeps its address allocations under the network's name, so a rename could
//!   hand an existing pod's address out again); only a nameless configuration gets
//!   `k8s-pod-network`. Istio always writes `cniVersion` 0.3.1 there; we move the primary's
//!   own `cniVersion` up to the list (0.3.1 only when it has none, or one older than 0.3.0,
//!   which predates lists), so the primary keeps being called with the version it was written
//!   for.
//! * Istio re-marshals from a Go map, so every key comes out sorted. With serde_json's
//!   `preserve_order`, every field and plugin keeps its place and the file changes only where
//!   our entry is.
//!
//! Our entry always goes last in `plugins` (a chained plugin sees the primary's result as
//! `prevResult`); an existing entry of ours is removed first, so a settings change moves no
//! other plugin and a second pass produces the same bytes.

use serde_json::{Map, Value};
use thiserror::Error;

/// The `type` of our plugin entry, i.e. the binary name in the CNI bin directory.
pub const PLUGIN_TYPE: &str = "mesh-redirect";
/// Istio's plugin: left in place (the operator may be migrating), but worth a warning since
/// both would program the same pod.
pub const ISTIO_CNI_TYPE: &str = "istio-cni";
/// The list name istio-cni gives a wrapped single-plugin configuration (ours only for a
/// primary without a name of its own).
pub const WRAPPED_NAME: &str = "k8s-pod-network";
/// The list version istio-cni writes; also ours when the primary states none.
pub const WRAPPED_DEFAULT_VERSION: &str = "0.3.1";

/// Why a primary configuration cannot be chained.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConfError {
    /// The file is not JSON.
    #[error("not valid JSON: {0}")]
    NotJson(String),
    /// The top level is not an object.
    #[error("expected a JSON object at the top level")]
    NotObject,
    /// Neither a plugin nor a plugin list.
    #[error("neither a plugin (no \"type\") nor a plugin list (no \"plugins\" array)")]
    NoPlugins,
    /// A `plugins` entry is not an object.
    #[error("plugins[{0}] is not a JSON object")]
    PluginNotObject(usize),
    /// Our plugin settings cannot be added.
    #[error("{0}")]
    Settings(String),
}

/// How the primary is shaped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// A plugin list (`plugins`), normally a `.conflist`.
    List,
    /// A single plugin (top-level `type`), normally a `.conf`: it must be wrapped into a list.
    Single,
}

/// The result of [`chain`].
#[derive(Debug, Clone, PartialEq)]
pub struct Chained {
    /// The new configuration: always a plugin list.
    pub config: Map<String, Value>,
    /// The primary's shape before chaining.
    pub shape: Shape,
    /// An `istio-cni` entry is present (and was kept).
    pub has_istio_cni: bool,
}

/// Parses a configuration file's bytes into a JSON object.
pub fn parse(bytes: &[u8]) -> Result<Map<String, Value>, ConfError> {
    match serde_json::from_slice(bytes) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(ConfError::NotObject),
        Err(e) => Err(ConfError::NotJson(e.to_string())),
    }
}

/// Tells a single plugin from a list. Like istio-cni, a top-level `type` makes it a single
/// plugin, whatever the extension of the file it came from.
pub fn shape(conf: &Map<String, Value>) -> Result<Shape, ConfError> {
    if conf.contains_key("type") {
        return Ok(Shape::Single);
    }
    let plugins = conf
        .get("plugins")
        .and_then(Value::as_array)
        .ok_or(ConfError::NoPlugins)?;
    if let Some(i) = plugins.iter().position(|p| !p.is_object()) {
        return Err(ConfError::PluginNotObject(i));
    }
    Ok(Shape::List)
}

fn plugin_type(plugin: &Value) -> Option<&str> {
    plugin.get("type").and_then(Value::as_str)
}

/// Builds our plugin entry: `type` first, then the settings in the order given, with
/// `kubernetes.kubeconfig` set to `kubeconfig` (other `kubernetes` keys are kept).
///
/// A `type` in the settings is ignored (the entry is ours by definition) and so is a
/// `cniVersion`: inside a list, libcni hands every plugin the list's version, and istio-cni
/// drops it for the same reason.
pub fn plugin_entry(
    settings: &Map<String, Value>,
    kubeconfig: &str,
) -> Result<Map<String, Value>, ConfError> {
    let mut entry = Map::new();
    entry.insert("type".into(), Value::String(PLUGIN_TYPE.into()));
    for (k, v) in settings {
        if k != "type" && k != "cniVersion" {
            entry.insert(k.clone(), v.clone());
        }
    }
    let kube = entry
        .entry("kubernetes")
        .or_insert_with(|| Value::Object(Map::new()));
    match kube {
        Value::Object(k) => {
            k.insert("kubeconfig".into(), Value::String(kubeconfig.into()));
        }
        Value::Null => {
            *kube = Value::Object(Map::from_iter([(
                "kubeconfig".to_string(),
                Value::String(kubeconfig.into()),
            )]));
        }
        other => {
            return Err(ConfError::Settings(format!(
                "\"kubernetes\" must be an object, got {other}"
            )))
        }
    }
    Ok(entry)
}

/// Chains `entry` into `primary`: removes any entry of ours, appends `entry` at the end of
/// `plugins`, wrapping a single plugin into a list first. Every other field keeps its value
/// and position.
pub fn chain(
    mut primary: Map<String, Value>,
    entry: Map<String, Value>,
) -> Result<Chained, ConfError> {
    let shape = shape(&primary)?;
    let mut list = match shape {
        Shape::List => primary,
        Shape::Single => {
            let version = match primary.shift_remove("cniVersion") {
                Some(Value::String(v)) if list_capable(&v) => v,
                _ => WRAPPED_DEFAULT_VERSION.to_string(),
            };
            let name = match primary.get("name") {
                Some(Value::String(n)) if !n.is_empty() => n.clone(),
                _ => WRAPPED_NAME.to_string(),
            };
            let mut list = Map::new();
            list.insert("cniVersion".into(), Value::String(version));
            list.insert("name".into(), Value::String(name));
            list.insert("plugins".into(), Value::Array(vec![Value::Object(primary)]));
            list
        }
    };
    let Some(Value::Array(plugins)) = list.get_mut("plugins") else {
        unreachable!("shape() checked that plugins is an array");
    };
    plugins.retain(|p| plugin_type(p) != Some(PLUGIN_TYPE));
    let has_istio_cni = plugins
        .iter()
        .any(|p| plugin_type(p) == Some(ISTIO_CNI_TYPE));
    plugins.push(Value::Object(entry));
    Ok(Chained {
        config: list,
        shape,
        has_istio_cni,
    })
}

/// Plugin lists exist since CNI 0.3.0; an older (or malformed) version cannot head one.
fn list_capable(version: &str) -> bool {
    let mut parts = version.split('.').map(str::parse::<u32>);
    match (parts.next(), parts.next()) {
        (Some(Ok(major)), Some(Ok(minor))) => (major, minor) >= (0, 3),
        _ => false,
    }
}

/// Removes every entry of ours from a plugin list. `None` when there was none (or the
/// configuration is not a list): then nothing needs writing.
pub fn unchain(mut conf: Map<String, Value>) -> Option<Map<String, Value>> {
    let Some(Value::Array(plugins)) = conf.get_mut("plugins") else {
        return None;
    };
    let before = plugins.len();
    plugins.retain(|p| plugin_type(p) != Some(PLUGIN_TYPE));
    (plugins.len() != before).then_some(conf)
}

/// The plugins of a list, for callers that need to know whether any is left.
pub fn plugin_count(conf: &Map<String, Value>) -> usize {
    conf.get("plugins")
        .and_then(Value::as_array)
        .map_or(0, Vec::len)
}

/// True when the list holds an entry of ours.
pub fn has_entry(conf: &Map<String, Value>) -> bool {
    conf.get("plugins")
        .and_then(Value::as_array)
        .is_some_and(|p| p.iter().any(|p| plugin_type(p) == Some(PLUGIN_TYPE)))
}

/// The file's bytes: two-space indentation (what most primaries and istio-cni write) and a
/// final newline.
pub fn render(conf: &Map<String, Value>) -> Vec<u8> {
    let mut out = serde_json::to_vec_pretty(conf).expect("a JSON map always serializes");
    out.push(b'\n');
    out
}

/// Equality that also compares key order. `Map`'s `==` ignores order, but a reordered file is
/// a different file to us: we want it rewritten into our order exactly once, then left alone.
pub fn same(a: &Map<String, Value>, b: &Map<String, Value>) -> bool {
    serde_json::to_vec(a).ok() == serde_json::to_vec(b).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => panic!("not an object"),
        }
    }

    fn ours() -> Map<String, Value> {
        plugin_entry(&obj(json!({"backend": "auto"})), "/etc/cni/net.d/k").unwrap()
    }

    #[test]
    fn entry_has_type_first_and_kubeconfig() {
        let e = plugin_entry(
            &obj(
                json!({"type": "x", "cniVersion": "1.0.0", "exclude_namespaces": ["a"],
                        "kubernetes": {"exclude_namespaces": ["b"]}}),
            ),
            "/k",
        )
        .unwrap();
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"type":"mesh-redirect","exclude_namespaces":["a"],"kubernetes":{"exclude_namespaces":["b"],"kubeconfig":"/k"}}"#
        );
        assert!(plugin_entry(&obj(json!({"kubernetes": 3})), "/k").is_err());
    }

    #[test]
    fn single_plugin_is_wrapped_with_its_version() {
        let c = chain(
            obj(json!({"cniVersion": "1.0.0", "name": "n", "type": "bridge"})),
            ours(),
        )
        .unwrap();
        assert_eq!(c.shape, Shape::Single);
        assert_eq!(
            Value::Object(c.config),
            json!({"cniVersion": "1.0.0", "name": "n",
                   "plugins": [{"name": "n", "type": "bridge"}, Value::Object(ours())]})
        );
        for old in [json!("0.2.0"), json!(null), json!(3), json!("garbage")] {
            let c = chain(obj(json!({"cniVersion": old, "type": "b"})), ours()).unwrap();
            assert_eq!(c.config["cniVersion"], json!("0.3.1"));
            assert_eq!(
                c.config["name"],
                json!(WRAPPED_NAME),
                "a nameless network gets Istio's"
            );
        }
    }

    #[test]
    fn existing_entries_are_replaced_at_the_end() {
        let list = obj(json!({"cniVersion": "0.3.1", "name": "k", "plugins": [
            {"type": "calico"}, {"type": "mesh-redirect", "old": true},
            {"type": "portmap"}, {"type": "mesh-redirect"}, {"type": "istio-cni"}]}));
        let c = chain(list, ours()).unwrap();
        assert!(c.has_istio_cni);
        let types: Vec<_> = c.config["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["type"].as_str().unwrap())
            .collect();
        assert_eq!(
            types,
            ["calico", "portmap", "istio-cni", "mesh-redirect"].as_slice()
        );
        let again = chain(c.config.clone(), ours()).unwrap();
        assert!(same(&again.config, &c.config));
    }

    #[test]
    fn bad_primaries() {
        assert!(matches!(parse(b"{\"a\":"), Err(ConfError::NotJson(_))));
        assert_eq!(parse(b"[]"), Err(ConfError::NotObject));
        assert_eq!(
            chain(obj(json!({"name": "x"})), ours()),
            Err(ConfError::NoPlugins)
        );
        assert_eq!(
            chain(obj(json!({"plugins": [{"type": "a"}, 1]})), ours()),
            Err(ConfError::PluginNotObject(1))
        );
    }

    #[test]
    fn unchain_removes_only_ours() {
        let c = chain(
            obj(json!({"plugins": [{"type": "a", "z": 1, "b": 2}]})),
            ours(),
        )
        .unwrap();
        let back = unchain(c.config).unwrap();
        assert!(same(
            &back,
            &obj(json!({"plugins": [{"type": "a", "z": 1, "b": 2}]}))
        ));
        assert_eq!(unchain(back), None);
    }

    #[test]
    fn same_sees_order() {
        let a = obj(json!({"a": 1, "b": 2}));
        let mut b = Map::new();
        b.insert("b".into(), json!(2));
        b.insert("a".into(), json!(1));
        assert_eq!(a, b);
        assert!(!same(&a, &b));
    }
}

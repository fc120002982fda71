// Shared body of the `kubeconfig` fuzz target (fuzz/fuzz_targets/kubeconfig.rs) and its
// property test (integration/properties.rs): included as a module, not a crate of its own.
//
// What the plugin reads to reach the API server: the kubeconfig (YAML or JSON), with its
// base64 certificates and keys turned into a TLS configuration.
//
// The reader opens the files a kubeconfig names (`certificate-authority`, `client-key`…).
// Relative names resolve under a directory that does not exist; an input naming an absolute
// path that is not a small regular file (a device, a FIFO, /proc) is skipped, so that a
// mutation can never make the fuzzer read /dev/zero forever or block on a pipe.

use mesh_redirect::cni::kube::KubeConfig;
use serde_json::Value;
use std::path::Path;

const BASE_DIR: &str = "/nonexistent/mesh-redirect-fuzz";

/// Input: kubeconfig text (invalid UTF-8 is replaced, as a reader of text would see it).
pub fn run(data: &[u8]) {
    check(&String::from_utf8_lossy(data));
}

/// Parses the text and checks what a parsed kubeconfig promises.
pub fn check(text: &str) {
    if !files_are_safe(text) {
        return;
    }
    let kc = match KubeConfig::parse(text, Path::new(BASE_DIR)) {
        Ok(kc) => kc,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    // Parsing is deterministic.
    let again = KubeConfig::parse(text, Path::new(BASE_DIR)).expect("parsed once");
    assert_eq!(again.server(), kc.server());
    assert_eq!(again.cluster(), kc.cluster());
    assert_eq!(again.user(), kc.user());
    assert_eq!(again.context(), kc.context());
    assert_eq!(
        again.insecure_skip_tls_verify(),
        kc.insecure_skip_tls_verify()
    );
    assert_eq!(again.has_client_certificate(), kc.has_client_certificate());
    let _ = format!("{kc:?}");
}

/// Whether every string of the document is harmless as a file name (see the top).
fn files_are_safe(text: &str) -> bool {
    let doc: Option<Value> = if text.trim_start().starts_with('{') {
        serde_json::from_str(text).ok()
    } else {
        serde_norway::from_str(text).ok()
    };
    // Unparsable: the reader stops before opening anything.
    let Some(doc) = doc else { return true };
    let mut stack = vec![&doc];
    while let Some(v) = stack.pop() {
        match v {
            Value::String(s) if !path_is_safe(s) => return false,
            Value::Array(a) => stack.extend(a),
            Value::Object(m) => stack.extend(m.values()),
            _ => {}
        }
    }
    true
}

fn path_is_safe(s: &str) -> bool {
    let p = Path::new(s);
    if !p.is_absolute() {
        // Resolved under BASE_DIR, which does not exist.
        return true;
    }
    match std::fs::metadata(p) {
        Err(_) => !s.contains('\0'),
        Ok(m) => {
            let real = std::fs::canonicalize(p).unwrap_or_default();
            m.is_file()
                && m.len() <= 1 << 20
                && !["/proc", "/sys", "/dev", "/run"]
                    .iter()
                    .any(|d| real.starts_with(d))
        }
    }
}

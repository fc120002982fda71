//! The plugin's kubeconfig, made from the installer pod's service account.
//!
//! The plugin runs in the host's context (exec'd by the container runtime), where the
//! DaemonSet's service account is not mounted. So, as istio-cni's install-cni does, the token,
//! the cluster CA and the API server address are copied into a kubeconfig on the host. The
//! token is inline (the container path of the token file means nothing on the host) and is
//! rewritten when the kubelet rotates it; the CA is inline as `certificate-authority-data`.
//! The file is JSON, which `cni::kube::KubeConfig::load` reads as well as YAML, and which
//! needs no quoting rules of our own for whatever the token or namespace contain.

use super::error::InstallError;
use base64::Engine as _;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use serde_json::{json, Value};
use std::fmt;
use std::io;
use std::path::Path;

/// File name of the kubeconfig, next to the CNI configuration. It has no CNI extension, so
/// libcni never takes it for a network configuration.
pub const KUBECONFIG_FILE: &str = "mesh-redirect-kubeconfig";
/// Readable by root only: it holds a bearer token.
pub const KUBECONFIG_MODE: u32 = 0o600;
/// The port when `KUBERNETES_SERVICE_PORT` is unset: the API server's well-known HTTPS port.
pub const DEFAULT_API_PORT: u16 = 443;

/// The parts of the service account the kubeconfig needs.
pub struct ServiceAccount {
    /// The service account's bearer token.
    pub token: String,
    /// PEM, checked to hold at least one certificate.
    pub ca_pem: Vec<u8>,
    /// Informational (the context's default namespace); optional.
    pub namespace: Option<String>,
}

impl fmt::Debug for ServiceAccount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceAccount")
            .field("token", &"<redacted>")
            .field("ca_pem", &format_args!("{} bytes", self.ca_pem.len()))
            .field("namespace", &self.namespace)
            .finish()
    }
}

fn read_required(dir: &Path, name: &str, what: &'static str) -> Result<Vec<u8>, InstallError> {
    let path = dir.join(name);
    match std::fs::read(&path) {
        Ok(b) if b.iter().all(u8::is_ascii_whitespace) => {
            Err(InstallError::MissingServiceAccount {
                what,
                path,
                source: None,
            })
        }
        Ok(b) => Ok(b),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(InstallError::MissingServiceAccount {
            what,
            path,
            source: Some(e),
        }),
        Err(e) => Err(InstallError::io("cannot read", path, e)),
    }
}

/// Reads `token`, `ca.crt` and (optionally) `namespace` from a service account directory.
/// Projected volumes make these symlinks into a `..data` directory that the kubelet swaps;
/// reading through the link always gives a complete, consistent set.
pub fn read_service_account(dir: &Path) -> Result<ServiceAccount, InstallError> {
    let token = read_required(dir, "token", "token")?;
    let token = String::from_utf8(token)
        .map(|t| t.trim().to_string())
        .ok()
        .filter(|t| t.bytes().all(|b| (0x21..0x7f).contains(&b)))
        .ok_or_else(|| InstallError::InvalidServiceAccount {
            what: "token",
            path: dir.join("token"),
            // The plugin puts it into an HTTP header, where these would break the request.
            reason: "contains characters not allowed in an HTTP header".into(),
        })?;
    let ca_pem = read_required(dir, "ca.crt", "CA certificate")?;
    let certs = CertificateDer::pem_slice_iter(&ca_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| InstallError::InvalidServiceAccount {
            what: "CA certificate",
            path: dir.join("ca.crt"),
            reason: format!("invalid PEM: {e}"),
        })?;
    if certs.is_empty() {
        return Err(InstallError::InvalidServiceAccount {
            what: "CA certificate",
            path: dir.join("ca.crt"),
            reason: "no CERTIFICATE block".into(),
        });
    }
    let namespace = match std::fs::read_to_string(dir.join("namespace")) {
        Ok(ns) => Some(ns.trim().to_string()).filter(|ns| !ns.is_empty()),
        Err(_) => None,
    };
    Ok(ServiceAccount {
        token,
        ca_pem,
        namespace,
    })
}

/// `https://<host>:<port>`, with an IPv6 literal bracketed.
pub fn server_url(host: Option<&str>, port: Option<&str>) -> Result<String, InstallError> {
    let host = host
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .ok_or(InstallError::MissingApiServer("KUBERNETES_SERVICE_HOST"))?;
    if host.contains(['/', '?', '#', '@', ' ']) {
        return Err(InstallError::InvalidApiServer {
            name: "KUBERNETES_SERVICE_HOST",
            value: host.into(),
            reason: "expected a host name or an IP address",
        });
    }
    let port = match port.map(str::trim).filter(|p| !p.is_empty()) {
        None => DEFAULT_API_PORT,
        Some(p) => p.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| {
            InstallError::InvalidApiServer {
                name: "KUBERNETES_SERVICE_PORT",
                value: p.into(),
                reason: "expected a port number (1-65535)",
            }
        })?,
    };
    let host = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    Ok(format!("https://{host}:{port}"))
}

/// The kubeconfig's bytes.
pub fn render(server: &str, sa: &ServiceAccount) -> Vec<u8> {
    let mut context = json!({"cluster": "local", "user": "mesh-redirect"});
    if let Some(ns) = &sa.namespace {
        context["namespace"] = Value::String(ns.clone());
    }
    let doc = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{
            "name": "local",
            "cluster": {
                "server": server,
                "certificate-authority-data":
                    base64::engine::general_purpose::STANDARD.encode(&sa.ca_pem),
            },
        }],
        "users": [{"name": "mesh-redirect", "user": {"token": sa.token}}],
        "contexts": [{"name": "mesh-redirect", "context": context}],
        "current-context": "mesh-redirect",
    });
    let mut out = serde_json::to_vec_pretty(&doc).expect("JSON always serializes");
    out.push(b'\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_urls() {
        assert_eq!(
            server_url(Some("10.96.0.1"), Some("443")).unwrap(),
            "https://10.96.0.1:443"
        );
        assert_eq!(
            server_url(Some("fd00::1"), Some("6443")).unwrap(),
            "https://[fd00::1]:6443"
        );
        assert_eq!(
            server_url(Some("[fd00::1]"), None).unwrap(),
            "https://[fd00::1]:443"
        );
        assert!(matches!(
            server_url(None, Some("443")),
            Err(InstallError::MissingApiServer("KUBERNETES_SERVICE_HOST"))
        ));
        assert!(server_url(Some("h"), Some("http")).is_err());
        assert!(server_url(Some("h"), Some("0")).is_err());
        assert!(server_url(Some("a/b"), None).is_err());
    }
}

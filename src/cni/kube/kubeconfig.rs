//! Reading a kubeconfig into a [`KubeConfig`]: choosing the context, cluster and user, and
//! loading and checking every credential and CA it names up front, so a broken file fails
//! with a message naming the field instead of retrying until the deadline.

use super::{config, KubeError};
use base64::Engine as _;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Map, Value};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use ureq::tls::{Certificate, ClientCert, PrivateKey, RootCerts, TlsConfig, TlsProvider};

/// What a kubeconfig resolves to: one server, how to trust it, and how to authenticate.
#[derive(Clone)]
pub struct KubeConfig {
    context: Option<String>,
    cluster: String,
    user: Option<String>,
    /// `https://host[:port][/prefix]` without a trailing slash.
    server: String,
    insecure_skip_tls_verify: bool,
    token: Option<String>,
    token_file: Option<PathBuf>,
    /// Field path of the user, for messages about the token file.
    user_path: String,
    has_client_cert: bool,
    /// Everything TLS needs, validated at parse time: ureq would panic (and `panic = "abort"`
    /// would kill the plugin) on a client key that does not match its certificate.
    tls: TlsConfig,
}

/// Secrets stay out of logs: only the shape of the credentials is printed.
impl fmt::Debug for KubeConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KubeConfig")
            .field("context", &self.context)
            .field("cluster", &self.cluster)
            .field("user", &self.user)
            .field("server", &self.server)
            .field("insecure_skip_tls_verify", &self.insecure_skip_tls_verify)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("token_file", &self.token_file)
            .field("client_certificate", &self.has_client_cert)
            .finish()
    }
}

impl KubeConfig {
    /// Reads a kubeconfig file (YAML or JSON). Relative paths inside it are taken relative to
    /// the file's directory, as kubectl does.
    pub fn load(path: impl AsRef<Path>) -> Result<KubeConfig, KubeError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| {
            KubeError::Config(format!("cannot read kubeconfig {}: {e}", path.display()))
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        KubeConfig::parse(&text, base).map_err(|e| match e {
            KubeError::Config(m) => KubeError::Config(format!("{}: {m}", path.display())),
            other => other,
        })
    }

    /// Parses kubeconfig text; `base_dir` anchors relative file paths.
    ///
    /// The context is `current-context`, else the first context; without contexts, the first
    /// cluster and the first user (if any) are used.
    pub fn parse(text: &str, base_dir: &Path) -> Result<KubeConfig, KubeError> {
        let doc = parse_document(text)?;
        let root = doc
            .as_object()
            .ok_or_else(|| config("kubeconfig: expected a mapping at the top level"))?;
        let clusters = named_list(root, "clusters")?;
        let contexts = named_list(root, "contexts")?;
        let users = named_list(root, "users")?;
        let (context, cluster, user) = select(root, &clusters, &contexts, &users)?;

        let cl = ClusterSettings::parse(cluster, base_dir)?;
        let us = match user {
            Some(u) => UserSettings::parse(u, base_dir)?,
            None => UserSettings::default(),
        };
        let has_client_cert = us.client.is_some();
        let tls = tls_config(&cl, us.client)?;

        Ok(KubeConfig {
            context,
            cluster: cluster.name.clone(),
            user: user.map(|u| u.name.clone()),
            server: cl.server,
            insecure_skip_tls_verify: cl.ca.is_none(),
            token: us.token,
            token_file: us.token_file,
            user_path: us.path,
            has_client_cert,
            tls,
        })
    }

    /// The API server URL, without a trailing slash.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The context that was used, if the kubeconfig has any.
    pub fn context(&self) -> Option<&str> {
        self.context.as_deref()
    }

    /// The name of the cluster entry that was used.
    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    /// The name of the user entry that was used (`None`: anonymous).
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    /// True when the server certificate is not verified.
    pub fn insecure_skip_tls_verify(&self) -> bool {
        self.insecure_skip_tls_verify
    }

    /// True when a client certificate is presented.
    pub fn has_client_certificate(&self) -> bool {
        self.has_client_cert
    }

    /// The bearer token for the next request. `tokenFile` wins over `token` and is read
    /// every time, so rotation needs no restart; if it cannot be read, an inline `token` is
    /// the fallback (client-go behaves the same way).
    pub(super) fn bearer_token(&self) -> Result<Option<String>, KubeError> {
        let Some(file) = &self.token_file else {
            return Ok(self.token.clone());
        };
        let field = format!("{}.tokenFile", self.user_path);
        match std::fs::read_to_string(file) {
            Ok(text) => check_token(text.trim(), &field).map(|t| Some(t.to_string())),
            Err(_) if self.token.is_some() => Ok(self.token.clone()),
            Err(e) => Err(config(format!(
                "{field}: cannot read {}: {e}",
                file.display()
            ))),
        }
    }

    /// The validated TLS settings (trust and client certificate) for the HTTP agent.
    pub(super) fn tls(&self) -> &TlsConfig {
        &self.tls
    }
}

/// Picks the context (`current-context`, else the first), its cluster and its user; without
/// contexts, the first cluster and the first user.
fn select<'n, 'a>(
    root: &Map<String, Value>,
    clusters: &'n [Named<'a>],
    contexts: &[Named<'a>],
    users: &'n [Named<'a>],
) -> Result<(Option<String>, &'n Named<'a>, Option<&'n Named<'a>>), KubeError> {
    let current = opt_str(root, "current-context", "current-context")?.filter(|s| !s.is_empty());
    let (context, cluster_ref, user_ref) = match current {
        Some(want) => {
            let c = contexts
                .iter()
                .find(|c| c.name == want)
                .ok_or_else(|| config(format!("current-context: no context named {want:?}")))?;
            context_refs(c)?
        }
        None => match contexts.first() {
            Some(c) => context_refs(c)?,
            None => (None, None, None),
        },
    };

    let cluster = match &cluster_ref {
        Some((path, name)) => clusters
            .iter()
            .find(|c| c.name == *name)
            .ok_or_else(|| config(format!("{path}: no cluster named {name:?}")))?,
        None => clusters
            .first()
            .ok_or_else(|| config("clusters: no cluster is defined"))?,
    };
    let user = match &user_ref {
        Some((path, name)) => Some(
            users
                .iter()
                .find(|u| u.name == *name)
                .ok_or_else(|| config(format!("{path}: no user named {name:?}")))?,
        ),
        // A context without a user is anonymous; without any context, kubectl's
        // "first of each" fallback also takes the first user.
        None if context.is_none() => users.first(),
        None => None,
    };
    Ok((context, cluster, user))
}

/// The TLS settings: the cluster's CA (or no verification), and the user's client
/// certificate, checked against its key first.
fn tls_config(
    cl: &ClusterSettings,
    client: Option<ClientIdentity>,
) -> Result<TlsConfig, KubeError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = TlsConfig::builder()
        .provider(TlsProvider::Rustls)
        .unversioned_rustls_crypto_provider(provider.clone());
    tls = match &cl.ca {
        Some(certs) => tls.root_certs(RootCerts::new_with_certs(
            &certs
                .iter()
                .map(|c| Certificate::from_der(c).to_owned())
                .collect::<Vec<_>>(),
        )),
        None => tls.disable_verification(true),
    };
    if let Some(client) = client {
        client.check(&provider)?;
        tls = tls.client_cert(Some(client.into_ureq()?));
    }
    Ok(tls.build())
}

fn parse_document(text: &str) -> Result<Value, KubeError> {
    // JSON is (almost) YAML, but serde_json gives better messages for JSON files, and YAML
    // parsers disagree with JSON on corner cases such as tabs.
    let v: Value = if text.trim_start().starts_with('{') {
        serde_json::from_str(text)
            .map_err(|e| config(format!("kubeconfig is not valid JSON: {e}")))?
    } else {
        serde_norway::from_str(text)
            .map_err(|e| config(format!("kubeconfig is not valid YAML: {e}")))?
    };
    if v.is_null() {
        return Err(config("kubeconfig is empty"));
    }
    Ok(v)
}

/// One entry of `clusters`, `contexts` or `users`, with the field path used in messages.
struct Named<'a> {
    name: String,
    /// e.g. `clusters[local]`, or `clusters[#0]` for an entry without a name.
    path: String,
    /// The inner `cluster` / `context` / `user` mapping (empty if absent or null).
    body: Option<&'a Map<String, Value>>,
    inner_key: &'static str,
}

impl Named<'_> {
    /// The field path of `key` inside the entry, for messages.
    fn field(&self, key: &str) -> String {
        format!("{}.{}.{key}", self.path, self.inner_key)
    }

    /// The string at `key` of the inner mapping, if set.
    fn str(&self, key: &str) -> Result<Option<String>, KubeError> {
        match self.body {
            Some(m) => opt_str(m, key, &self.field(key)),
            None => Ok(None),
        }
    }

    /// The string at `key`, with an empty string counting as unset.
    fn non_empty(&self, key: &str) -> Result<Option<String>, KubeError> {
        Ok(self.str(key)?.filter(|s| !s.is_empty()))
    }

    /// The boolean at `key` of the inner mapping, if set.
    fn bool(&self, key: &str) -> Result<Option<bool>, KubeError> {
        match self.body {
            Some(m) => opt_bool(m, key, &self.field(key)),
            None => Ok(None),
        }
    }

    /// True when `key` is present with a non-null value.
    fn has(&self, key: &str) -> bool {
        self.body
            .is_some_and(|m| !matches!(m.get(key), None | Some(Value::Null)))
    }
}

fn named_list<'a>(
    root: &'a Map<String, Value>,
    list: &'static str,
) -> Result<Vec<Named<'a>>, KubeError> {
    let inner_key = match list {
        "clusters" => "cluster",
        "contexts" => "context",
        _ => "user",
    };
    let items = match root.get(list) {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(_) => return Err(config(format!("{list}: expected a list"))),
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let obj = item
                .as_object()
                .ok_or_else(|| config(format!("{list}[#{i}]: expected a mapping")))?;
            let name = opt_str(obj, "name", &format!("{list}[#{i}].name"))?.unwrap_or_default();
            let path = if name.is_empty() {
                format!("{list}[#{i}]")
            } else {
                format!("{list}[{name}]")
            };
            let body = match obj.get(inner_key) {
                None | Some(Value::Null) => None,
                Some(Value::Object(m)) => Some(m),
                Some(_) => {
                    return Err(config(format!("{path}.{inner_key}: expected a mapping")));
                }
            };
            Ok(Named {
                name,
                path,
                body,
                inner_key,
            })
        })
        .collect()
}

type Ref = Option<(String, String)>;

/// A context's name and its (field path, name) references to a cluster and a user.
fn context_refs(c: &Named<'_>) -> Result<(Option<String>, Ref, Ref), KubeError> {
    let get =
        |key: &str| -> Result<Ref, KubeError> { Ok(c.non_empty(key)?.map(|s| (c.field(key), s))) };
    let cluster = get("cluster")?;
    if cluster.is_none() {
        return Err(config(format!("{}: missing", c.field("cluster"))));
    }
    Ok((Some(c.name.clone()), cluster, get("user")?))
}

fn opt_str(m: &Map<String, Value>, key: &str, field: &str) -> Result<Option<String>, KubeError> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(config(format!("{field}: expected a string"))),
    }
}

fn opt_bool(m: &Map<String, Value>, key: &str, field: &str) -> Result<Option<bool>, KubeError> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(config(format!("{field}: expected true or false"))),
    }
}

/// Reads `<key>-data` (base64) or `<key>` (a file path); both at once is an error, as in
/// kubectl's validation. Returns the PEM bytes and the field they came from.
fn data_or_file(
    entry: &Named<'_>,
    key: &str,
    base_dir: &Path,
) -> Result<Option<(Vec<u8>, String)>, KubeError> {
    let data_key = format!("{key}-data");
    let data_field = entry.field(&data_key);
    let file_field = entry.field(key);
    let data = entry.non_empty(&data_key)?;
    let file = entry.non_empty(key)?;
    match (data, file) {
        (Some(_), Some(_)) => Err(config(format!(
            "{data_field}: set together with {key}; use one of them"
        ))),
        (Some(b64), None) => {
            // Go's decoder skips line breaks in base64; so do we.
            let clean: String = b64.chars().filter(|c| !c.is_ascii_whitespace()).collect();
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(clean)
                .map_err(|e| config(format!("{data_field}: invalid base64: {e}")))?;
            Ok(Some((bytes, data_field)))
        }
        (None, Some(path)) => {
            let full = resolve(base_dir, &path);
            let bytes = std::fs::read(&full).map_err(|e| {
                config(format!("{file_field}: cannot read {}: {e}", full.display()))
            })?;
            Ok(Some((bytes, file_field)))
        }
        (None, None) => Ok(None),
    }
}

fn resolve(base_dir: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base_dir.join(p)
    }
}

struct ClusterSettings {
    server: String,
    /// `None`: insecure-skip-tls-verify.
    ca: Option<Vec<CertificateDer<'static>>>,
}

impl ClusterSettings {
    fn parse(c: &Named<'_>, base_dir: &Path) -> Result<ClusterSettings, KubeError> {
        let server_field = c.field("server");
        let server = c
            .non_empty("server")?
            .ok_or_else(|| config(format!("{server_field}: missing")))?;
        let server = check_server(&server, &server_field)?;

        for unsupported in ["proxy-url", "tls-server-name"] {
            if c.non_empty(unsupported)?.is_some() {
                return Err(config(format!("{}: not supported", c.field(unsupported))));
            }
        }

        let insecure_field = c.field("insecure-skip-tls-verify");
        let insecure = c.bool("insecure-skip-tls-verify")?.unwrap_or(false);
        let ca = data_or_file(c, "certificate-authority", base_dir)?;
        let ca = match (ca, insecure) {
            (Some((_, field)), true) => {
                // client-go refuses this combination too.
                return Err(config(format!(
                    "{insecure_field}: cannot be combined with {field}"
                )));
            }
            (Some((pem, field)), false) => Some(parse_ca(&pem, &field)?),
            (None, true) => None,
            (None, false) => {
                return Err(config(format!(
                    "{}: missing (no system roots are used: set certificate-authority-data, \
                     certificate-authority or insecure-skip-tls-verify)",
                    c.field("certificate-authority-data")
                )));
            }
        };
        Ok(ClusterSettings { server, ca })
    }
}

fn check_server(server: &str, field: &str) -> Result<String, KubeError> {
    let uri: ureq::http::Uri = server
        .parse()
        .map_err(|e| config(format!("{field}: {server:?} is not a URL: {e}")))?;
    if !uri
        .scheme_str()
        .is_some_and(|s| s.eq_ignore_ascii_case("https"))
    {
        return Err(config(format!(
            "{field}: {server:?} must be an https:// URL (the token must not travel in clear)"
        )));
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(config(format!("{field}: {server:?} has no host")));
    }
    if uri.query().is_some() || server.contains('#') {
        return Err(config(format!(
            "{field}: {server:?} must not have a query or fragment"
        )));
    }
    // A path prefix (as behind Rancher's proxy) is kept; API paths are appended to it.
    Ok(server.trim_end_matches('/').to_string())
}

fn parse_ca(pem: &[u8], field: &str) -> Result<Vec<CertificateDer<'static>>, KubeError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| config(format!("{field}: invalid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(config(format!("{field}: no CERTIFICATE block found")));
    }
    // Check each one now: rustls would otherwise skip unparsable roots silently, and the
    // failure would show up later as an unknown-issuer error.
    let mut store = rustls::RootCertStore::empty();
    for c in &certs {
        store
            .add(c.clone())
            .map_err(|e| config(format!("{field}: unusable CA certificate: {e}")))?;
    }
    Ok(certs)
}

#[derive(Default)]
struct UserSettings {
    path: String,
    token: Option<String>,
    token_file: Option<PathBuf>,
    client: Option<ClientIdentity>,
}

impl UserSettings {
    fn parse(u: &Named<'_>, base_dir: &Path) -> Result<UserSettings, KubeError> {
        let token_field = u.field("token");
        let token = u
            .str("token")?
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
            .map(|t| check_token(&t, &token_field).map(str::to_string))
            .transpose()?;
        let token_file = u.non_empty("tokenFile")?.map(|p| resolve(base_dir, &p));

        let cert = data_or_file(u, "client-certificate", base_dir)?;
        let key = data_or_file(u, "client-key", base_dir)?;
        let client = match (cert, key) {
            (Some((cert, cert_field)), Some((key, key_field))) => {
                Some(ClientIdentity::parse(&cert, &cert_field, &key, &key_field)?)
            }
            (Some(_), None) => {
                return Err(config(format!(
                    "{}: missing (client-certificate needs a key)",
                    u.field("client-key-data")
                )));
            }
            (None, Some(_)) => {
                return Err(config(format!(
                    "{}: missing (client-key needs a certificate)",
                    u.field("client-certificate-data")
                )));
            }
            (None, None) => None,
        };

        let has_credential = token.is_some() || token_file.is_some() || client.is_some();
        for unsupported in ["exec", "auth-provider", "username", "password"] {
            if u.has(unsupported) && !has_credential {
                return Err(config(format!(
                    "{}: not supported (use token, tokenFile or client-certificate-data)",
                    u.field(unsupported)
                )));
            }
        }
        Ok(UserSettings {
            path: format!("{}.{}", u.path, u.inner_key),
            token,
            token_file,
            client,
        })
    }
}

/// A token goes into a header; a stray newline or control character would break the
/// request, so it is refused here with the field name.
fn check_token<'a>(token: &'a str, field: &str) -> Result<&'a str, KubeError> {
    if token.is_empty() {
        return Err(config(format!("{field}: the token is empty")));
    }
    if !token.bytes().all(|b| (0x21..0x7f).contains(&b)) {
        return Err(config(format!(
            "{field}: the token contains characters not allowed in an HTTP header"
        )));
    }
    Ok(token)
}

struct ClientIdentity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    /// The PEM again, for ureq (its key-kind type is not public, so it parses the PEM itself).
    key_pem: Vec<u8>,
    key_field: String,
}

impl ClientIdentity {
    fn parse(
        cert: &[u8],
        cert_field: &str,
        key_pem: &[u8],
        key_field: &str,
    ) -> Result<Self, KubeError> {
        let chain = CertificateDer::pem_slice_iter(cert)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| config(format!("{cert_field}: invalid PEM: {e}")))?;
        if chain.is_empty() {
            return Err(config(format!("{cert_field}: no CERTIFICATE block found")));
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem)
            .map_err(|e| config(format!("{key_field}: no usable private key: {e}")))?;
        Ok(ClientIdentity {
            chain,
            key,
            key_pem: key_pem.to_vec(),
            key_field: key_field.to_string(),
        })
    }

    /// Builds a throw-away rustls client config with this identity: it fails (instead of
    /// ureq panicking later) when the key is of an unsupported type or does not belong to
    /// the certificate.
    fn check(&self, provider: &Arc<rustls::crypto::CryptoProvider>) -> Result<(), KubeError> {
        rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| config(format!("TLS setup: {e}")))?
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| {
                config(format!(
                    "{}: does not fit the client certificate: {e}",
                    self.key_field
                ))
            })?;
        Ok(())
    }

    fn into_ureq(self) -> Result<ClientCert, KubeError> {
        let chain: Vec<Certificate<'static>> = self
            .chain
            .iter()
            .map(|c| Certificate::from_der(c).to_owned())
            .collect();
        let key = PrivateKey::from_pem(&self.key_pem)
            .map_err(|e| config(format!("{}: {e}", self.key_field)))?;
        Ok(ClientCert::new_with_certs(&chain, key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_must_fit_a_header() {
        assert!(check_token("abc.def-_", "t").is_ok());
        assert!(check_token("a b", "t").is_err());
        assert!(check_token("a\nb", "t").is_err());
    }

    #[test]
    fn debug_redacts_the_token() {
        let cfg = KubeConfig::parse(
            "clusters:\n- name: c\n  cluster:\n    server: https://127.0.0.1:6443\n    insecure-skip-tls-verify: true\n\
             users:\n- name: u\n  user:\n    token: s3cr3t\n",
            Path::new("/"),
        )
        .unwrap();
        let dbg = format!("{cfg:?}");
        assert!(!dbg.contains("s3cr3t"), "{dbg}");
        assert!(dbg.contains("redacted"), "{dbg}");
    }
}

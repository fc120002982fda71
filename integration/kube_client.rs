//! The pod lookup of the CNI mode (`cni::kube`) against a scripted HTTPS API server on
//! 127.0.0.1 (`support/apiserver.rs`). No root needed.
//!
//! Deadlines are short (about 1 s) to keep the suite fast. The timing assertions check the
//! deadline contract of `get_pod` (it returns by the deadline, give or take scheduling),
//! not performance: the bound is the deadline plus 0.5 s.

#[path = "support/apiserver.rs"]
mod apiserver;
mod support;

use apiserver::{dead_port, pod_json, pod_path, status_json, ApiServer, Reply};
use base64::Engine as _;
use mesh_redirect::cni::kube::{get_pod, KubeConfig, KubeError, RetryPolicy};
use std::path::Path;
use std::time::{Duration, Instant};

const NS: &str = "default";
const POD: &str = "web-0";
const SLACK: Duration = Duration::from_millis(500);

fn policy(deadline_ms: u64) -> RetryPolicy {
    RetryPolicy {
        deadline: Duration::from_millis(deadline_ms),
        attempt_timeout: Duration::from_millis(500),
        ..RetryPolicy::default()
    }
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn parse(server: &ApiServer, text: &str) -> KubeConfig {
    KubeConfig::parse(text, server.dir()).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

/// Runs `get_pod` and returns its result with the time it took.
fn timed(cfg: &KubeConfig, p: &RetryPolicy) -> (Result<serde_json::Value, KubeError>, Duration) {
    let t = Instant::now();
    let r = get_pod(cfg, NS, POD, p);
    (r, t.elapsed())
}

/// Runs `get_pod` under `p`: it gives up with `DeadlineExceeded` (after at least one
/// attempt) by the deadline, give or take [`SLACK`]. Returns the attempts and last error.
fn assert_deadline_exceeded(cfg: &KubeConfig, p: &RetryPolicy) -> (u32, String) {
    let (r, took) = timed(cfg, p);
    let (attempts, last_error) = match r {
        Err(KubeError::DeadlineExceeded {
            attempts,
            last_error,
        }) => {
            assert!(attempts >= 1);
            (attempts, last_error)
        }
        other => panic!("expected DeadlineExceeded, got {other:?}"),
    };
    assert!(
        took >= p.deadline.saturating_sub(Duration::from_millis(50)),
        "gave up early: {took:?}"
    );
    assert!(took <= p.deadline + SLACK, "overran the deadline: {took:?}");
    (attempts, last_error)
}

/// A 1 s deadline and attempts allowed to take longer: one attempt may use all of it.
fn one_attempt_policy() -> RetryPolicy {
    RetryPolicy {
        deadline: Duration::from_millis(1000),
        attempt_timeout: Duration::from_secs(5),
        ..RetryPolicy::default()
    }
}

#[test]
fn returns_the_pod_and_sends_the_bearer_token() {
    let server = ApiServer::builder().token("t0ken").start();
    server.pod(NS, POD, Reply::Pod(pod_json(NS, POD)));
    let cfg = parse(&server, &server.kubeconfig("t0ken"));
    assert_eq!(cfg.server(), server.url());
    assert_eq!(cfg.context(), Some("test"));
    assert!(!cfg.insecure_skip_tls_verify());

    let pod = get_pod(&cfg, NS, POD, &policy(2000)).expect("pod");
    assert_eq!(pod["kind"], "Pod");
    assert_eq!(pod["metadata"]["name"], POD);
    assert_eq!(server.pod_requests(NS, POD), 1);
}

#[test]
fn kubeconfig_file_and_json_kubeconfig() {
    let server = ApiServer::builder().token("t0ken").start();
    server.pod(NS, POD, Reply::Pod(pod_json(NS, POD)));
    let cfg = KubeConfig::load(server.kubeconfig_file("t0ken")).expect("load");
    get_pod(&cfg, NS, POD, &policy(2000)).expect("pod via kubeconfig file");

    // The same kubeconfig as JSON (client-go accepts both).
    let json = serde_json::json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": server.url(),
            "certificate-authority-data": b64(server.ca_pem())}}],
        "users": [{"name": "u", "user": {"token": "t0ken"}}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "x",
    });
    let cfg = parse(&server, &serde_json::to_string_pretty(&json).unwrap());
    get_pod(&cfg, NS, POD, &policy(2000)).expect("pod via JSON kubeconfig");
}

#[test]
fn current_context_selects_cluster_and_user() {
    let server = ApiServer::builder().token("right").start();
    server.pod(NS, POD, Reply::Pod(pod_json(NS, POD)));
    let text = format!(
        "clusters:\n\
         - name: dead\n  cluster:\n    server: https://127.0.0.1:{dead}\n    insecure-skip-tls-verify: true\n\
         - name: live\n  cluster:\n    server: {url}\n    certificate-authority-data: {ca}\n\
         users:\n- name: wrong\n  user:\n    token: wrong\n- name: right\n  user:\n    token: right\n\
         contexts:\n- name: a\n  context:\n    cluster: dead\n    user: wrong\n\
         - name: b\n  context:\n    cluster: live\n    user: right\n\
         current-context: b\n",
        dead = dead_port(),
        url = server.url(),
        ca = b64(server.ca_pem()),
    );
    let cfg = parse(&server, &text);
    assert_eq!(
        (cfg.context(), cfg.cluster(), cfg.user()),
        (Some("b"), "live", Some("right"))
    );
    get_pod(&cfg, NS, POD, &policy(2000)).expect("pod");

    // Without current-context the first context wins (the dead one).
    let first = parse(&server, &text.replace("current-context: b\n", ""));
    assert_eq!((first.context(), first.cluster()), (Some("a"), "dead"));
}

#[test]
fn token_file_is_reread_on_every_call() {
    let server = ApiServer::builder().token("first").start();
    server.pod(NS, POD, Reply::Pod(pod_json(NS, POD)));
    server.write_file("token", "first\n");
    // A relative tokenFile is relative to the kubeconfig's directory.
    let text = server.kubeconfig_with(&server.cluster_fields(), &[("tokenFile", "token".into())]);
    let path = server.write_file("kubeconfig", &text);
    let cfg = KubeConfig::load(&path).expect("load");
    get_pod(&cfg, NS, POD, &policy(2000)).expect("first token");

    // Rotate: the server wants the new token, and the same KubeConfig picks it up.
    server.set_token(Some("second"));
    server.write_file("token", "second");
    get_pod(&cfg, NS, POD, &policy(2000)).expect("rotated token");
    assert_eq!(server.pod_requests(NS, POD), 2);

    // A token file that vanished is a configuration error, not something to retry.
    std::fs::remove_file(server.dir().join("token")).unwrap();
    match get_pod(&cfg, NS, POD, &policy(2000)) {
        Err(KubeError::Config(m)) => assert!(m.contains("tokenFile"), "{m}"),
        other => panic!("expected Config, got {other:?}"),
    }
    assert_eq!(server.pod_requests(NS, POD), 2);
}

#[test]
fn client_certificate_authentication() {
    let server = ApiServer::builder().require_client_cert().start();
    server.pod(NS, POD, Reply::Pod(pod_json(NS, POD)));
    let (cert, key) = server.client_identity("system:node:test");

    // Inline data.
    let cfg = parse(
        &server,
        &server.kubeconfig_with(
            &server.cluster_fields(),
            &[
                ("client-certificate-data", b64(&cert)),
                ("client-key-data", b64(&key)),
            ],
        ),
    );
    assert!(cfg.has_client_certificate());
    get_pod(&cfg, NS, POD, &policy(2000)).expect("pod with inline client cert");

    // Files, relative to the kubeconfig's directory.
    server.write_file("client.crt", &cert);
    server.write_file("client.key", &key);
    let cfg = parse(
        &server,
        &server.kubeconfig_with(
            &server.cluster_fields(),
            &[
                ("client-certificate", "client.crt".into()),
                ("client-key", "client.key".into()),
            ],
        ),
    );
    get_pod(&cfg, NS, POD, &policy(2000)).expect("pod with client cert files");
    assert_eq!(server.pod_requests(NS, POD), 2);

    // Without a certificate the server refuses the handshake: an error, never a pod.
    let p = policy(1000);
    let (r, took) = timed(&parse(&server, &server.kubeconfig("unused")), &p);
    assert!(r.is_err(), "{r:?}");
    assert!(took <= p.deadline + SLACK, "{took:?}");
    assert_eq!(server.pod_requests(NS, POD), 2);
}

#[test]
fn ca_from_a_file_relative_to_the_kubeconfig() {
    let server = ApiServer::start();
    server.pod(NS, POD, Reply::Pod(pod_json(NS, POD)));
    server.write_file("ca.crt", server.ca_pem());
    let text = server.kubeconfig_with(
        &[
            ("server", server.url()),
            ("certificate-authority", "ca.crt".into()),
        ],
        &[("token", "x".into())],
    );
    let path = server.write_file("kubeconfig", &text);
    let cfg = KubeConfig::load(path).expect("load");
    get_pod(&cfg, NS, POD, &policy(2000)).expect("pod");
}

#[test]
fn insecure_skip_tls_verify_needs_no_ca() {
    let server = ApiServer::start();
    server.pod(NS, POD, Reply::Pod(pod_json(NS, POD)));
    let cfg = parse(
        &server,
        &server.kubeconfig_with(
            &[
                ("server", server.url()),
                ("insecure-skip-tls-verify", "true".into()),
            ],
            &[("token", "x".into())],
        ),
    );
    assert!(cfg.insecure_skip_tls_verify());
    get_pod(&cfg, NS, POD, &policy(2000)).expect("pod");
}

#[test]
fn not_found_is_retried_until_the_deadline() {
    let server = ApiServer::start();
    let cfg = parse(&server, &server.kubeconfig("x"));
    let (attempts, last_error) = assert_deadline_exceeded(&cfg, &policy(1000));
    // 100 + 200 + 400 ms of backoff fit into one second, so an idle machine makes four
    // attempts; a loaded one may spend longer on each handshake. Retrying at all is the point.
    assert!(attempts >= 2, "{attempts}");
    assert!(last_error.contains("404"), "{last_error}");
    assert!(last_error.contains("not found"), "{last_error}");
    assert_eq!(server.pod_requests(NS, POD), attempts as usize);
}

#[test]
fn not_found_turns_into_the_pod() {
    let server = ApiServer::start();
    server.pod(
        NS,
        POD,
        Reply::Sequence(vec![
            Reply::NotFound,
            Reply::NotFound,
            Reply::Pod(pod_json(NS, POD)),
        ]),
    );
    let cfg = parse(&server, &server.kubeconfig("x"));
    let pod = get_pod(&cfg, NS, POD, &policy(3000)).expect("pod after two 404s");
    assert_eq!(pod["metadata"]["name"], POD);
    assert_eq!(server.pod_requests(NS, POD), 3);
}

#[test]
fn server_errors_and_throttling_are_retried() {
    let server = ApiServer::start();
    server.pod(
        NS,
        POD,
        Reply::Sequence(vec![
            Reply::Status(500, status_json(500, "InternalError", "etcd is sad")),
            Reply::Status(503, "unavailable".into()),
            Reply::Status(429, status_json(429, "TooManyRequests", "slow down")),
            Reply::Pod(pod_json(NS, POD)),
        ]),
    );
    let cfg = parse(&server, &server.kubeconfig("x"));
    get_pod(&cfg, NS, POD, &policy(3000)).expect("pod after 500, 503, 429");
    assert_eq!(server.pod_requests(NS, POD), 4);
}

#[test]
fn unauthorized_and_forbidden_are_not_retried() {
    let server = ApiServer::builder().token("right").start();
    server.pod(NS, POD, Reply::Pod(pod_json(NS, POD)));
    let cfg = parse(&server, &server.kubeconfig("wrong"));
    let t = Instant::now();
    match get_pod(&cfg, NS, POD, &policy(5000)) {
        Err(KubeError::Unauthorized { status: 401, body }) => {
            assert!(body.contains("Unauthorized"), "{body}")
        }
        other => panic!("expected Unauthorized, got {other:?}"),
    }
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    assert_eq!(server.pod_requests(NS, POD), 1);

    server.set_token(None);
    server.pod(
        NS,
        POD,
        Reply::Status(403, status_json(403, "Forbidden", "pods is forbidden")),
    );
    match get_pod(&cfg, NS, POD, &policy(5000)) {
        Err(KubeError::Unauthorized { status: 403, body }) => {
            assert!(body.contains("forbidden"), "{body}")
        }
        other => panic!("expected Unauthorized, got {other:?}"),
    }
    assert_eq!(server.pod_requests(NS, POD), 1);
}

#[test]
fn a_body_that_is_not_a_pod_is_a_decode_error() {
    let server = ApiServer::start();
    let cfg = parse(&server, &server.kubeconfig("x"));
    for (i, body) in [
        "<html>not json</html>",
        r#"{"kind":"Status","status":"Success"}"#,
        "[1,2,3]",
        "",
    ]
    .into_iter()
    .enumerate()
    {
        let name = format!("pod-{i}");
        server.pod(NS, &name, Reply::Garbage(body.into()));
        match get_pod(&cfg, NS, &name, &policy(3000)) {
            Err(KubeError::Decode(_)) => {}
            other => panic!("{body:?}: expected Decode, got {other:?}"),
        }
        assert_eq!(server.pod_requests(NS, &name), 1, "{body:?} was retried");
    }
}

#[test]
fn other_client_errors_are_not_retried() {
    let server = ApiServer::start();
    server.pod(NS, POD, Reply::Status(400, "bad request".into()));
    let cfg = parse(&server, &server.kubeconfig("x"));
    match get_pod(&cfg, NS, POD, &policy(3000)) {
        Err(KubeError::Status { status: 400, body }) => assert_eq!(body, "bad request"),
        other => panic!("expected Status 400, got {other:?}"),
    }
    assert_eq!(server.pod_requests(NS, POD), 1);
}

#[test]
fn a_server_that_never_answers_is_bounded_by_the_deadline() {
    // TCP accepted, not a single byte back (not even the TLS handshake).
    let silent = ApiServer::builder().silent().start();
    let cfg = parse(&silent, &silent.kubeconfig("x"));
    assert_deadline_exceeded(&cfg, &policy(1000));
    assert!(silent.connections() >= 1);

    // TLS done and the request read, but no HTTP answer.
    let hang = ApiServer::start();
    hang.pod(NS, POD, Reply::Hang);
    let cfg = parse(&hang, &hang.kubeconfig("x"));
    // One attempt may take the whole deadline.
    assert_deadline_exceeded(&cfg, &one_attempt_policy());
    assert_eq!(hang.pod_requests(NS, POD), 1);
}

#[test]
fn a_dripping_server_is_bounded_by_the_deadline() {
    let server = ApiServer::start();
    // About 3 s for the whole reply: every read makes progress, none is slow enough to
    // trip a per-read timeout.
    server.pod(
        NS,
        POD,
        Reply::Drip(
            Duration::from_millis(10),
            Box::new(Reply::Pod(pod_json(NS, POD))),
        ),
    );
    let cfg = parse(&server, &server.kubeconfig("x"));
    assert_deadline_exceeded(&cfg, &one_attempt_policy());
}

#[test]
fn a_slow_attempt_times_out_and_the_next_one_succeeds() {
    let server = ApiServer::start();
    server.pod(
        NS,
        POD,
        Reply::Sequence(vec![
            Reply::Delay(
                Duration::from_millis(1500),
                Box::new(Reply::Pod(pod_json(NS, POD))),
            ),
            Reply::Pod(pod_json(NS, POD)),
        ]),
    );
    let cfg = parse(&server, &server.kubeconfig("x"));
    let p = RetryPolicy {
        deadline: Duration::from_millis(3000),
        attempt_timeout: Duration::from_millis(300),
        ..RetryPolicy::default()
    };
    let (r, took) = timed(&cfg, &p);
    r.expect("second attempt");
    assert!(
        took < Duration::from_millis(1500),
        "waited for the slow reply: {took:?}"
    );
    assert_eq!(server.pod_requests(NS, POD), 2);
}

#[test]
fn a_server_that_is_down_is_retried_until_the_deadline() {
    let text = format!(
        "clusters:\n- name: c\n  cluster:\n    server: https://127.0.0.1:{}\n    insecure-skip-tls-verify: true\n",
        dead_port()
    );
    let cfg = KubeConfig::parse(&text, Path::new("/")).expect("parse");
    assert_eq!(cfg.user(), None);
    let (_, last_error) = assert_deadline_exceeded(&cfg, &policy(1000));
    assert!(
        last_error.to_lowercase().contains("refused"),
        "{last_error}"
    );
}

#[test]
fn a_server_certificate_from_another_ca_is_rejected() {
    let server = ApiServer::start();
    let other = ApiServer::start();
    server.pod(NS, POD, Reply::Pod(pod_json(NS, POD)));
    let cfg = parse(
        &server,
        &server.kubeconfig_with(
            &[
                ("server", server.url()),
                ("certificate-authority-data", b64(other.ca_pem())),
            ],
            &[("token", "x".into())],
        ),
    );
    let p = policy(1000);
    let (r, took) = timed(&cfg, &p);
    match r {
        Err(KubeError::Tls(m)) => assert!(m.to_lowercase().contains("certificate"), "{m}"),
        other => panic!("expected a TLS error, got {other:?}"),
    }
    // A certificate that does not verify will not start verifying: no retries.
    assert!(took < p.deadline, "{took:?}");
    assert_eq!(server.connections(), 1);
    assert_eq!(server.total_requests(), 0);
}

#[test]
fn invalid_pod_coordinates_are_refused_before_any_request() {
    let server = ApiServer::start();
    let cfg = parse(&server, &server.kubeconfig("x"));
    for (ns, name, field) in [
        ("Default", POD, "namespace"),
        ("a/b", POD, "namespace"),
        ("", POD, "namespace"),
        (NS, "../secrets", "name"),
        (NS, "a?watch=1", "name"),
        (NS, "", "name"),
    ] {
        match get_pod(&cfg, ns, name, &policy(1000)) {
            Err(KubeError::Config(m)) => assert!(m.contains(field), "{m}"),
            other => panic!("{ns:?}/{name:?}: expected Config, got {other:?}"),
        }
    }
    assert_eq!(server.connections(), 0);
}

#[test]
fn invalid_kubeconfigs_name_the_field() {
    let server = ApiServer::start();
    let url = server.url();
    let ca = b64(server.ca_pem());
    let (cert, key) = server.client_identity("u");
    let (other_cert, _) = server.client_identity("other");
    let cluster = |extra: &[(&'static str, String)]| {
        let mut f = vec![
            ("server", url.clone()),
            ("certificate-authority-data", ca.clone()),
        ];
        f.extend_from_slice(extra);
        f
    };
    let token = || vec![("token", "x".to_string())];
    // Cluster fields (with a token user): all of them given, or the server and `extra`.
    let cluster_with =
        |extra: &[(&'static str, String)]| server.kubeconfig_with(&cluster(extra), &token());
    let server_with = |extra: &[(&'static str, String)]| {
        let mut f = vec![("server", url.clone())];
        f.extend_from_slice(extra);
        server.kubeconfig_with(&f, &token())
    };
    // User fields, with the whole cluster.
    let user_with = |user: &[(&'static str, String)]| server.kubeconfig_with(&cluster(&[]), user);
    let insecure = |server_url: String| {
        server.kubeconfig_with(
            &[
                ("server", server_url),
                ("insecure-skip-tls-verify", "true".into()),
            ],
            &token(),
        )
    };

    let cases: Vec<(String, &str)> = vec![
        ("".into(), "empty"),
        ("clusters: [\n".into(), "YAML"),
        ("{\"clusters\": ".into(), "JSON"),
        ("- a\n- b\n".into(), "top level"),
        ("clusters: 3\n".into(), "clusters"),
        ("users: []\n".into(), "clusters"),
        (
            server.kubeconfig_with(&[("certificate-authority-data", ca.clone())], &token()),
            "clusters[test].cluster.server",
        ),
        (insecure(url.replace("https", "http")), "server"),
        (insecure("not a url".into()), "server"),
        (server_with(&[]), "certificate-authority-data"),
        (
            server_with(&[("certificate-authority-data", "!!!".into())]),
            "certificate-authority-data",
        ),
        (
            server_with(&[("certificate-authority-data", b64("not a pem"))]),
            "certificate-authority-data",
        ),
        (
            server_with(&[("certificate-authority", "missing-ca.crt".into())]),
            "certificate-authority",
        ),
        (
            cluster_with(&[("certificate-authority", "ca.crt".into())]),
            "certificate-authority-data",
        ),
        (
            cluster_with(&[("insecure-skip-tls-verify", "true".into())]),
            "insecure-skip-tls-verify",
        ),
        (
            cluster_with(&[("insecure-skip-tls-verify", "yes".into())]),
            "insecure-skip-tls-verify",
        ),
        (
            cluster_with(&[("proxy-url", "http://proxy:3128".into())]),
            "proxy-url",
        ),
        (
            server
                .kubeconfig("x")
                .replace("current-context: test", "current-context: nope"),
            "current-context",
        ),
        (
            server
                .kubeconfig("x")
                .replace("    cluster: test\n    user", "    cluster: nope\n    user"),
            "contexts[test].context.cluster",
        ),
        (
            server
                .kubeconfig("x")
                .replace("    user: test\n", "    user: nope\n"),
            "contexts[test].context.user",
        ),
        (
            user_with(&[("token", "a\nb".into())]),
            "users[test].user.token",
        ),
        (
            user_with(&[("client-certificate-data", b64(&cert))]),
            "client-key-data",
        ),
        (
            user_with(&[("client-key-data", b64(&key))]),
            "client-certificate-data",
        ),
        (
            user_with(&[
                ("client-certificate-data", b64(&other_cert)),
                ("client-key-data", b64(&key)),
            ]),
            "client-key-data",
        ),
        (
            user_with(&[
                ("client-certificate-data", b64(&cert)),
                ("client-key-data", b64("no key here")),
            ]),
            "client-key-data",
        ),
        (
            user_with(&[
                ("client-certificate", "nope.crt".into()),
                ("client-key-data", b64(&key)),
            ]),
            "client-certificate",
        ),
        (user_with(&[("exec", "x".into())]), "users[test].user.exec"),
    ];
    for (text, field) in &cases {
        match KubeConfig::parse(text, server.dir()) {
            Err(KubeError::Config(m)) => {
                assert!(m.contains(field), "want {field:?} in {m:?}\n{text}")
            }
            other => panic!("want Config naming {field:?}, got {other:?}\n{text}"),
        }
    }

    // load() names the file.
    let missing = server.dir().join("no-such-kubeconfig");
    match KubeConfig::load(&missing) {
        Err(KubeError::Config(m)) => assert!(m.contains("no-such-kubeconfig"), "{m}"),
        other => panic!("expected Config, got {other:?}"),
    }
    let bad = server.write_file("bad-kubeconfig", &server_with(&[]));
    match KubeConfig::load(&bad) {
        Err(KubeError::Config(m)) => {
            assert!(
                m.contains("bad-kubeconfig") && m.contains("certificate-authority-data"),
                "{m}"
            )
        }
        other => panic!("expected Config, got {other:?}"),
    }
}

#[test]
fn pod_path_matches_the_client() {
    // The test server and the client agree on the URL layout.
    assert_eq!(pod_path("ns", "p"), "/api/v1/namespaces/ns/pods/p");
}

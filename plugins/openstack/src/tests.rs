//! Tests of the session over real HTTP(S) on loopback.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use reqwest::header::HeaderMap;

use crate::testing::{Reply, Request, Server, keystone_token_reply};
use crate::{AuthConfig, CloudConfig, Error, Interface, Secret, Session};

const TOKEN_FIXTURE: &str = include_str!("../tests/fixtures/keystone-auth-tokens.json");

fn password_config(base: &str) -> CloudConfig {
    CloudConfig::new(AuthConfig {
        auth_url: Some(format!("{base}/identity")),
        username: Some("admin".into()),
        password: Some(Secret::new("hunter2-password")),
        user_domain_name: Some("Default".into()),
        project_name: Some("admin".into()),
        project_domain_id: Some("default".into()),
        ..Default::default()
    })
}

/// A Keystone issuing `tok-1`, `tok-2`, ... and a compute service that accepts only the
/// token `accept(n)` says is current.
fn cloud(
    lifetime: Duration,
    current: impl Fn(usize) -> String + Send + Sync + 'static,
) -> impl Fn(&Request, &str) -> Reply {
    let issued = Arc::new(AtomicUsize::new(0));
    move |req: &Request, base: &str| match (req.method.as_str(), req.path.as_str()) {
        ("POST", "/identity/v3/auth/tokens") => {
            let n = issued.fetch_add(1, Ordering::SeqCst) + 1;
            keystone_token_reply(
                TOKEN_FIXTURE,
                base,
                &format!("tok-{n}"),
                lifetime,
                &[("compute", "/compute/v2.1")],
            )
        }
        ("GET", "/compute/v2.1/ping") => {
            let n = issued.load(Ordering::SeqCst);
            if req.header("x-auth-token") == Some(current(n).as_str()) {
                Reply::json(200, r#"{"pong": true}"#)
            } else {
                Reply::json(
                    401,
                    r#"{"error": {"code": 401, "message": "The request you have made requires authentication."}}"#,
                )
            }
        }
        _ => Reply::not_found(&req.path),
    }
}

async fn ping(session: &Session) -> Result<serde_json::Value, Error> {
    let url = crate::join_path(&session.endpoint("compute").await?, &["ping"]);
    session.get_json(&url, &HeaderMap::new()).await
}

#[tokio::test]
async fn password_auth_sends_scope_and_the_token_is_reused() {
    let server = Server::start(cloud(Duration::from_secs(3600), |n| format!("tok-{n}")))
        .await
        .unwrap();
    let session = Session::new(&password_config(server.base())).unwrap();
    for _ in 0..3 {
        assert_eq!(
            ping(&session).await.unwrap(),
            serde_json::json!({"pong": true})
        );
    }
    assert_eq!(session.authentications(), 1);
    assert_eq!(server.count("POST", "/identity/v3/auth/tokens"), 1);
    let post = &server.requests()[0];
    let body: serde_json::Value = serde_json::from_slice(&post.body).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"auth": {
            "identity": {"methods": ["password"], "password": {"user": {
                "name": "admin", "domain": {"name": "Default"}, "password": "hunter2-password"}}},
            "scope": {"project": {"name": "admin", "domain": {"id": "default"}}}
        }})
    );
    assert_eq!(
        session.project_id().await.unwrap().as_deref(),
        Some("fca91c01eef940b089c475c8aec063b9")
    );
    assert!(session.roles().await.unwrap().contains(&"admin".to_owned()));
}

#[tokio::test]
async fn application_credentials_are_sent_without_scope() {
    let server = Server::start(cloud(Duration::from_secs(3600), |n| format!("tok-{n}")))
        .await
        .unwrap();
    let config = CloudConfig::new(AuthConfig {
        auth_url: Some(format!("{}/identity/v3", server.base())),
        application_credential_id: Some("app-id".into()),
        application_credential_secret: Some(Secret::new("app-secret")),
        ..Default::default()
    });
    let session = Session::new(&config).unwrap();
    ping(&session).await.unwrap();
    let body: serde_json::Value = serde_json::from_slice(&server.requests()[0].body).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"auth": {"identity": {"methods": ["application_credential"],
            "application_credential": {"id": "app-id", "secret": "app-secret"}}}})
    );
}

#[tokio::test]
async fn a_401_renews_the_token_once_and_retries() {
    // The service accepts only tokens issued after the first one: the first token is
    // refused once, the retry with a fresh one succeeds.
    let server = Server::start(cloud(Duration::from_secs(3600), |n| {
        if n >= 2 {
            format!("tok-{n}")
        } else {
            "none".into()
        }
    }))
    .await
    .unwrap();
    let session = Session::new(&password_config(server.base())).unwrap();
    assert_eq!(
        ping(&session).await.unwrap(),
        serde_json::json!({"pong": true})
    );
    assert_eq!(session.authentications(), 2);
    let tokens: Vec<Option<String>> = server
        .requests()
        .iter()
        .filter(|r| r.method == "GET")
        .map(|r| r.header("x-auth-token").map(str::to_owned))
        .collect();
    assert_eq!(
        tokens,
        vec![Some("tok-1".to_owned()), Some("tok-2".to_owned())]
    );
}

#[tokio::test]
async fn a_second_401_is_an_error_naming_url_and_status() {
    let server = Server::start(cloud(Duration::from_secs(3600), |_| "never".into()))
        .await
        .unwrap();
    let session = Session::new(&password_config(server.base())).unwrap();
    let err = ping(&session).await.unwrap_err();
    assert_eq!(err.status(), Some(401));
    let text = err.to_string();
    assert!(
        text.contains(&format!(
            "GET {}/compute/v2.1/ping: HTTP 401 Unauthorized",
            server.base()
        )),
        "{text}"
    );
    assert!(text.contains("refused again with a fresh token"), "{text}");
    assert_eq!(session.authentications(), 2, "exactly one retry");
}

#[tokio::test]
async fn a_token_is_renewed_shortly_before_it_expires() {
    // Lifetime 1 s, margin 120 s: renewed after half its lifetime.
    let server = Server::start(cloud(Duration::from_secs(1), |n| format!("tok-{n}")))
        .await
        .unwrap();
    let session = Session::new(&password_config(server.base())).unwrap();
    ping(&session).await.unwrap();
    ping(&session).await.unwrap();
    assert_eq!(session.authentications(), 1);
    tokio::time::sleep(Duration::from_millis(600)).await;
    ping(&session).await.unwrap();
    assert_eq!(session.authentications(), 2);
}

#[tokio::test]
async fn concurrent_requests_share_one_authentication() {
    let server = Server::start(cloud(Duration::from_secs(3600), |n| format!("tok-{n}")))
        .await
        .unwrap();
    let session = Session::new(&password_config(server.base())).unwrap();
    let results = futures_join(&session, 8).await;
    assert!(results.iter().all(Result::is_ok));
    assert_eq!(session.authentications(), 1);
}

async fn futures_join(session: &Session, n: usize) -> Vec<Result<serde_json::Value, Error>> {
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..n {
        let s = session.clone();
        set.spawn(async move { ping(&s).await });
    }
    let mut out = Vec::new();
    while let Some(r) = set.join_next().await {
        out.push(r.unwrap());
    }
    out
}

#[tokio::test]
async fn keystone_refusal_names_the_url_and_message() {
    let server = Server::start(|_: &Request, _: &str| {
        Reply::json(401, r#"{"error": {"code": 401, "title": "Unauthorized", "message": "The request you have made requires authentication."}}"#)
    })
    .await
    .unwrap();
    let session = Session::new(&password_config(server.base())).unwrap();
    let err = session.endpoint("compute").await.unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "Keystone refused to authenticate: POST {}/identity/v3/auth/tokens: HTTP 401: The request you have made requires authentication.",
            server.base()
        )
    );
    assert!(err.is_permanent());
}

#[tokio::test]
async fn catalog_lookup_by_interface_and_region() {
    let server = Server::start(cloud(Duration::from_secs(3600), |n| format!("tok-{n}")))
        .await
        .unwrap();
    let mut config = password_config(server.base());
    config.interface = Interface::Internal;
    config.region = Some("RegionOne".into());
    let session = Session::new(&config).unwrap();
    assert_eq!(
        session.endpoint("orchestration").await.unwrap().as_str(),
        format!("{}/v1/fca91c01eef940b089c475c8aec063b9", server.base())
    );
    config.region = Some("RegionTwo".into());
    let err = Session::new(&config)
        .unwrap()
        .endpoint("orchestration")
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Catalog { .. }), "{err}");
    config.endpoint_override = Some("https://heat.example/v1/p".into());
    let overridden = Session::new(&config)
        .unwrap()
        .endpoint("orchestration")
        .await
        .unwrap();
    assert_eq!(overridden.as_str(), "https://heat.example/v1/p");
}

#[tokio::test]
async fn a_slow_answer_is_a_timeout_naming_the_url() {
    let server = Server::start(|req: &Request, _: &str| {
        Reply::json(200, "{}").delayed(if req.path == "/slow" {
            Duration::from_secs(5)
        } else {
            Duration::ZERO
        })
    })
    .await
    .unwrap();
    let mut config = CloudConfig::new(AuthConfig {
        token: Some(Secret::new("admin:admin")),
        ..Default::default()
    });
    config.endpoint_override = Some(server.base().to_owned());
    config.timeout = Duration::from_millis(300);
    let session = Session::new(&config).unwrap();
    let url = reqwest::Url::parse(&format!("{}/slow", server.base())).unwrap();
    let err = session.get(&url, &HeaderMap::new()).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("GET {}/slow: timed out after 300ms", server.base())
    );
    assert_eq!(
        server.requests()[0].header("x-auth-token"),
        Some("admin:admin")
    );
}

#[tokio::test]
async fn credentials_in_a_url_never_show() {
    let url = reqwest::Url::parse("https://user:pa55@nova.example/v2.1").unwrap();
    assert_eq!(
        crate::display_url(&url),
        "https://user:***@nova.example/v2.1"
    );
}

#[test]
fn configuration_errors_name_the_field() {
    let err = Session::new(&CloudConfig::new(AuthConfig {
        auth_url: Some("http://k:5000".into()),
        username: Some("u".into()),
        password: Some(Secret::new("p")),
        ..Default::default()
    }))
    .unwrap_err();
    let Error::Field(field) = &err else {
        panic!("{err:?}")
    };
    assert_eq!(field.field, "auth.project_name");
    assert!(
        field.message.starts_with("is required (or `project_id`)"),
        "{err}"
    );
    assert!(err.is_permanent());
    let err = Session::new(&CloudConfig::new(AuthConfig {
        token: Some(Secret::new("t")),
        ..Default::default()
    }))
    .unwrap_err();
    assert_eq!(
        err,
        Error::Field(crate::ConfigError::new(
            "endpoint_override",
            "is required with a static token (there is no service catalog)"
        ))
    );
    assert_eq!(
        err.to_string(),
        "configuration: field `endpoint_override`: is required with a static token (there is no service catalog)"
    );
}

/// Neither the password nor the token appears in any log line, at any level.
#[tokio::test]
async fn secrets_are_never_logged() {
    #[derive(Clone, Default)]
    struct Buf(Arc<std::sync::Mutex<Vec<u8>>>);
    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Buf::default();
    let writer = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let server = Server::start(cloud(Duration::from_secs(3600), |n| {
        if n >= 2 {
            format!("tok-{n}")
        } else {
            "x".into()
        }
    }))
    .await
    .unwrap();
    let session = Session::new(&password_config(server.base())).unwrap();
    ping(&session).await.unwrap();
    tracing::debug!(session = ?session, "session");
    let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    assert!(text.contains("authenticated with Keystone"), "{text}");
    for secret in ["hunter2-password", "tok-1", "tok-2"] {
        assert!(!text.contains(secret), "{secret} logged:\n{text}");
    }
}

mod tls {
    use super::*;
    use tokio_rustls::rustls;

    struct Pki {
        ca_pem: String,
        acceptor: tokio_rustls::TlsAcceptor,
    }

    fn pki() -> Pki {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "synchronizer test CA");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["localhost".into()])
            .unwrap()
            .signed_by(&key, &ca, &ca_key)
            .unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .unwrap();
        Pki {
            ca_pem: ca.pem(),
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        }
    }

    async fn tls_server(acceptor: tokio_rustls::TlsAcceptor) -> Server {
        Server::start_wrapped(
            |_: &Request, _: &str| Reply::json(200, r#"{"ok": 1}"#),
            "https",
            move |tcp| {
                let acceptor = acceptor.clone();
                async move { acceptor.accept(tcp).await.ok() }
            },
        )
        .await
        .unwrap()
    }

    fn config(base: &str) -> CloudConfig {
        let mut c = CloudConfig::new(AuthConfig {
            token: Some(Secret::new("t")),
            ..Default::default()
        });
        c.endpoint_override = Some(base.to_owned());
        c
    }

    async fn fetch(config: &CloudConfig) -> Result<serde_json::Value, Error> {
        let session = Session::new(config)?;
        let url = session.endpoint("compute").await?;
        session.get_json(&url, &HeaderMap::new()).await
    }

    #[tokio::test]
    async fn a_custom_ca_file_is_trusted_and_nothing_else_is() {
        let pki = pki();
        let server = tls_server(pki.acceptor.clone()).await;
        let dir =
            std::env::temp_dir().join(format!("synchronizer-openstack-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca_file = dir.join("ca.pem");
        std::fs::write(&ca_file, &pki.ca_pem).unwrap();

        // Without the CA: refused, and the error names the URL.
        let err = fetch(&config(server.base())).await.unwrap_err();
        assert!(matches!(err, Error::Transport { .. }), "{err}");
        assert!(
            err.to_string()
                .starts_with(&format!("GET {}/", server.base())),
            "{err}"
        );

        // With the CA file: verified and accepted.
        let mut with_ca = config(server.base());
        with_ca.ca_file = Some(ca_file.clone());
        assert_eq!(fetch(&with_ca).await.unwrap(), serde_json::json!({"ok": 1}));

        // insecure: accepted without verification.
        let mut insecure = config(server.base());
        insecure.insecure = true;
        assert_eq!(
            fetch(&insecure).await.unwrap(),
            serde_json::json!({"ok": 1})
        );

        // A CA file without a certificate is a configuration error naming the file.
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let mut bad = config(server.base());
        bad.ca_file = Some(empty.clone());
        let err = Session::new(&bad).unwrap_err();
        assert!(
            err.to_string().contains(&empty.display().to_string()),
            "{err}"
        );
        let Error::Field(field) = err else {
            panic!("{err:?}")
        };
        assert_eq!(field.field, "ca_file");
        assert_eq!(bad.validate(), Err(field));
        assert_eq!(with_ca.validate(), Ok(()));
        let _ = std::fs::remove_dir_all(&dir);
    }
}

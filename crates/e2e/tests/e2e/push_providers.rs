//! Push providers over their real protocols, against stand-ins on loopback (issue 14):
//! - Web Push: a Python push service (`webpush_receiver.py`: http-ece and cryptography)
//!   that checks each request's VAPID JWT and decrypts its `aes128gcm` body with the
//!   subscription's private key: fifty quick messages to an offline member of a direct chat
//!   make one notification, reading elsewhere sends the clear, and a gone subscription
//!   answers 410 and is deleted.
//! - FCM HTTP v1: an OAuth token endpoint that checks the service account's RS256 assertion
//!   and a `messages:send` that checks the bearer token; `UNREGISTERED` deletes the token.
//! - APNs: an HTTP/2 server over TLS (a self-signed certificate the server is told to trust)
//!   that checks the ES256 provider token and the `apns-*` headers, and answers like Apple:
//!   410 `Unregistered`, 400 `BadDeviceToken`.

use std::sync::{Arc, Mutex};

use axum::extract::{Form, Path as AxumPath};
use axum::http::{HeaderMap, StatusCode as AxumStatus};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use natter_proto::rest::{PushConfig, PushRegistrations};
use natter_testkit::{TestServer, TestUser, poll_until};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt;

use super::push::read_up_to;

async fn register(server: &TestServer, user: &TestUser, body: Value) -> i64 {
    let (status, json) =
        server.call(Method::POST, "/v1/me/push", Some(&user.token), Some(&body)).await;
    assert_eq!(status, StatusCode::CREATED, "{json}");
    json["id"].as_i64().expect("an id")
}

async fn wait_unregistered(server: &TestServer, user: &TestUser) {
    poll_until(
        "the dead registration deleted",
        || async {
            let list: PushRegistrations = server
                .ok(Method::GET, "/v1/me/push", &user.token, None::<&()>, StatusCode::OK)
                .await;
            list.registrations.is_empty().then_some(())
        },
        || "still registered".into(),
    )
    .await;
}

/// Waits until `log` holds `n` items; returns them.
async fn wait_log<T: Clone + std::fmt::Debug>(
    what: &str,
    log: &Arc<Mutex<Vec<T>>>,
    n: usize,
) -> Vec<T> {
    poll_until(
        &format!("{n} {what}"),
        || async { Some(log.lock().unwrap().clone()).filter(|l| l.len() >= n) },
        || format!("got {:?}", log.lock().unwrap()),
    )
    .await
}

// ---- Web Push ----

/// The Python push service, and its address.
struct Receiver {
    _child: tokio::process::Child,
    base: String,
}

/// Starts a Python stand-in from this directory (`scripts/test.sh` names the interpreter of
/// its virtualenv, with the packages they need, in `NATTER_PYTHON`) and reads the HTTP port
/// it prints (`PORT n`) once it listens.
pub(crate) async fn python_stand_in(script: &str, args: &[&str]) -> (tokio::process::Child, u16) {
    let python = std::env::var("NATTER_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let script = format!("{}/tests/e2e/{script}", env!("CARGO_MANIFEST_DIR"));
    let mut child = tokio::process::Command::new(&python)
        .arg(&script)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("starting {python} {script}: {e}"));
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let line = natter_testkit::within("the stand-in listening", lines.next_line())
        .await
        .expect("its stdout")
        .unwrap_or_else(|| panic!("{script} printed no PORT line (are its packages installed? scripts/test.sh installs them)"));
    let port = line.strip_prefix("PORT ").expect("PORT n").parse().expect("a port");
    (child, port)
}

impl Receiver {
    async fn start(vapid_public: &str) -> Receiver {
        let (child, port) = python_stand_in("webpush_receiver.py", &[vapid_public]).await;
        Receiver { _child: child, base: format!("http://127.0.0.1:{port}") }
    }

    async fn subscribe(&self) -> Value {
        let res = reqwest::Client::new()
            .post(format!("{}/subscriptions", self.base))
            .send()
            .await
            .unwrap();
        res.json().await.unwrap()
    }

    async fn received(&self, sub: &Value) -> Vec<Value> {
        let id = sub["endpoint"].as_str().unwrap().rsplit('/').next().unwrap().to_owned();
        let res = reqwest::Client::new()
            .get(format!("{}/received/{id}", self.base))
            .send()
            .await
            .unwrap();
        res.json().await.unwrap()
    }

    async fn wait(&self, sub: &Value, n: usize) -> Vec<Value> {
        poll_until(
            &format!("{n} Web Pushes"),
            || async { Some(self.received(sub).await).filter(|r| r.len() >= n) },
            || "not yet".into(),
        )
        .await
    }

    async fn expire(&self, sub: &Value) {
        let id = sub["endpoint"].as_str().unwrap().rsplit('/').next().unwrap().to_owned();
        reqwest::Client::new().post(format!("{}/gone/{id}", self.base)).send().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_push_is_vapid_signed_encrypted_to_the_subscription_and_cleared() {
    let (public, private) = natter_server::vapid_keys().expect("VAPID keys");
    let receiver = Receiver::start(&public).await;
    let (vapid_public, vapid_private) = (public.clone(), private.clone());
    let server = TestServer::start_with(move |c| {
        // The default window: fifty quick messages fall in one.
        c.push.window_ms = 3_000;
        c.limits.receipt_flush_ms = 20;
        c.push.webpush = Some(natter_server::config::WebPushSettings {
            vapid_public_key: vapid_public,
            vapid_private_key: vapid_private,
            subject: "mailto:ops@natter.test".into(),
            allowed_hosts: vec!["127.0.0.1".into()],
            ttl_secs: 600,
        });
    })
    .await;
    let [alice, bob] = server.users(["alice", "bob"]).await;
    let ab = server.create_direct(&alice, &bob).await;

    // The browser learns the key to subscribe with.
    let config: PushConfig =
        server.ok(Method::GET, "/v1/push/config", &bob.token, None::<&()>, StatusCode::OK).await;
    assert_eq!(config.providers, ["webpush"]);
    assert_eq!(config.vapid_public_key.as_deref(), Some(public.as_str()));

    // Endpoints elsewhere, and malformed keys, are refused.
    let sub = receiver.subscribe().await;
    for bad in [
        json!({"provider": "webpush", "token": "https://push.evil.test/x", "p256dh": sub["p256dh"], "auth": sub["auth"]}),
        json!({"provider": "webpush", "token": sub["endpoint"], "p256dh": "AAAA", "auth": sub["auth"]}),
        json!({"provider": "webpush", "token": sub["endpoint"], "p256dh": sub["p256dh"]}),
    ] {
        let (status, json) =
            server.call(Method::POST, "/v1/me/push", Some(&bob.token), Some(&bad)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {json}");
    }
    register(
        &server,
        &bob,
        json!({"provider": "webpush", "token": sub["endpoint"], "p256dh": sub["p256dh"], "auth": sub["auth"]}),
    )
    .await;

    let mut last = 0;
    for i in 0..50 {
        last = server.send_rest(&alice, ab, &format!("w{i}"), &format!("hello {i}")).await.seq;
    }
    let got = receiver.wait(&sub, 1).await;
    let push = &got[0];
    assert_eq!(push["error"], Value::Null, "{push}");
    assert_eq!(push["vapid_ok"], true);
    assert_eq!(push["topic"], format!("c{ab}"));
    assert_eq!(push["ttl"], "600");
    assert_eq!(push["urgency"], "high");
    let payload = &push["payload"];
    assert_eq!((payload["kind"].as_str(), payload["count"].as_u64()), (Some("notify"), Some(50)));
    assert_eq!(payload["last_seq"], last);
    assert_eq!(payload["sender"], "alice");
    assert_eq!(payload["body"], "50 new messages");

    // Read elsewhere: the clear arrives, encrypted the same way.
    read_up_to(&server, &bob, ab, last).await;
    let got = receiver.wait(&sub, 2).await;
    assert_eq!(got[1]["error"], Value::Null, "{}", got[1]);
    assert_eq!(
        got[1]["payload"]["kind"], "clear",
        "one notification for the fifty, then the clear"
    );

    // The subscription expires: its first 410 deletes the registration.
    receiver.expire(&sub).await;
    server.send_rest(&alice, ab, "gone", "into the void").await;
    receiver.wait(&sub, 3).await;
    wait_unregistered(&server, &bob).await;
}

// ---- FCM ----

const PROJECT: &str = "natter-test";
const CLIENT_EMAIL: &str = "push@natter-test.iam.gserviceaccount.com";

#[derive(Default)]
struct FcmLog {
    token_calls: usize,
    messages: Vec<Value>,
}

/// FCM's token endpoint and `messages:send`, on loopback; the service account's key file.
async fn fcm(dir: &std::path::Path) -> (String, std::path::PathBuf, Arc<Mutex<FcmLog>>) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).expect("an RSA key");
    let public = DecodingKey::from_rsa_pem(key.public_key_pem().as_bytes()).expect("public key");
    let log: Arc<Mutex<FcmLog>> = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let token_uri = format!("{base}/token");
    let (log1, log2, aud) = (log.clone(), log.clone(), token_uri.clone());
    let app = axum::Router::new()
        .route(
            "/token",
            axum::routing::post(move |Form(form): Form<std::collections::HashMap<String, String>>| {
                let (log, public, aud) = (log1.clone(), public.clone(), aud.clone());
                async move {
                    log.lock().unwrap().token_calls += 1;
                    let mut v = Validation::new(Algorithm::RS256);
                    v.set_audience(&[aud]);
                    v.set_issuer(&[CLIENT_EMAIL]);
                    v.set_required_spec_claims(&["exp", "iat", "aud", "iss"]);
                    let claims = jsonwebtoken::decode::<Value>(&form["assertion"], &public, &v);
                    let ok = form.get("grant_type").map(String::as_str)
                        == Some("urn:ietf:params:oauth:grant-type:jwt-bearer")
                        && claims.is_ok_and(|c| {
                            c.claims["scope"] == "https://www.googleapis.com/auth/firebase.messaging"
                        });
                    if !ok {
                        return (AxumStatus::BAD_REQUEST, axum::Json(json!({"error": "invalid_grant"})));
                    }
                    (AxumStatus::OK, axum::Json(json!({"access_token": "fcm-access-1", "expires_in": 3599, "token_type": "Bearer"})))
                }
            }),
        )
        .route(
            "/v1/projects/{project}/messages:send",
            axum::routing::post(move |AxumPath(project): AxumPath<String>, headers: HeaderMap, axum::Json(body): axum::Json<Value>| {
                let log = log2.clone();
                async move {
                    let bearer = headers.get("authorization").and_then(|v| v.to_str().ok());
                    if bearer != Some("Bearer fcm-access-1") || project != PROJECT {
                        return (AxumStatus::UNAUTHORIZED, axum::Json(json!({"error": {"code": 401, "status": "UNAUTHENTICATED"}})));
                    }
                    let token = body["message"]["token"].as_str().unwrap_or_default().to_owned();
                    log.lock().unwrap().messages.push(body);
                    if token.starts_with("dead") {
                        let err = json!({"error": {"code": 404, "status": "NOT_FOUND", "message": "Requested entity was not found.",
                            "details": [{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": "UNREGISTERED"}]}});
                        return (AxumStatus::NOT_FOUND, axum::Json(err));
                    }
                    (AxumStatus::OK, axum::Json(json!({"name": format!("projects/{PROJECT}/messages/1")})))
                }
            }),
        );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let file = dir.join("service-account.json");
    let account = json!({
        "type": "service_account",
        "project_id": PROJECT,
        "private_key_id": "key-1",
        "private_key": key.serialize_pem(),
        "client_email": CLIENT_EMAIL,
        "token_uri": token_uri,
    });
    std::fs::write(&file, account.to_string()).unwrap();
    (base, file, log)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fcm_gets_an_oauth_token_once_and_drops_unregistered_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let (base, file, log) = fcm(dir.path()).await;
    let server = TestServer::start_with(move |c| {
        c.push.window_ms = 200;
        c.push.fcm =
            Some(natter_server::config::FcmSettings { service_account_file: file, base_url: base });
    })
    .await;
    let [alice, bob, carol] = server.users(["alice", "bob", "carol"]).await;
    let ab = server.create_direct(&alice, &bob).await;
    let ac = server.create_direct(&alice, &carol).await;
    register(&server, &bob, json!({"provider": "fcm", "token": "bob-android-1"})).await;
    register(&server, &carol, json!({"provider": "fcm", "token": "dead-android"})).await;

    let first = server.send_rest(&alice, ab, "f1", "hi bob").await.seq;
    let got = poll_until(
        "bob's FCM message",
        || async {
            log.lock()
                .unwrap()
                .messages
                .iter()
                .find(|m| m["message"]["token"] == "bob-android-1")
                .cloned()
        },
        || "not yet".into(),
    )
    .await;
    let m = &got["message"];
    assert_eq!(m["data"]["kind"], "notify");
    assert_eq!(m["data"]["last_seq"], first.to_string(), "data values are strings");
    assert_eq!(m["android"]["collapse_key"], format!("c{ab}"));
    assert_eq!(m["notification"]["title"], "alice");
    assert_eq!(m["notification"]["body"], "hi bob");

    server.send_rest(&alice, ac, "f2", "hi carol").await;
    wait_unregistered(&server, &carol).await;
    // A second push to bob reuses the access token.
    server.send_rest(&alice, ab, "f3", "again").await;
    poll_until(
        "bob's second FCM message",
        || async {
            let log = log.lock().unwrap();
            (log.messages.iter().filter(|m| m["message"]["token"] == "bob-android-1").count() >= 2)
                .then_some(())
        },
        || "not yet".into(),
    )
    .await;
    assert_eq!(log.lock().unwrap().token_calls, 1, "one OAuth token for every send");
}

// ---- APNs ----

/// What the APNs stand-in saw of one request.
#[derive(Debug, Clone)]
struct ApnsCall {
    token: String,
    http2: bool,
    jwt_ok: bool,
    headers: HeaderMap,
    body: Value,
}

/// An HTTP/2-over-TLS server speaking APNs's API; its base URL, its certificate (PEM) and
/// the `.p8` key file it checks provider tokens against.
async fn apns(
    dir: &std::path::Path,
) -> (String, std::path::PathBuf, std::path::PathBuf, Arc<Mutex<Vec<ApnsCall>>>) {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let cert =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).expect("a certificate");
    let ca = dir.join("apns-ca.pem");
    std::fs::write(&ca, cert.cert.pem()).unwrap();
    let p8 = rcgen::KeyPair::generate().expect("a P-256 key");
    let key_file = dir.join("AuthKey_KEY123.p8");
    std::fs::write(&key_file, p8.serialize_pem()).unwrap();
    let public = DecodingKey::from_ec_pem(p8.public_key_pem().as_bytes()).unwrap();

    let provider = Arc::new(tokio_rustls::rustls::crypto::aws_lc_rs::default_provider());
    let chain = vec![cert.cert.der().clone()];
    let key = tokio_rustls::rustls::pki_types::PrivateKeyDer::Pkcs8(
        cert.signing_key.serialize_der().into(),
    );
    let mut tls = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("https://127.0.0.1:{}", listener.local_addr().unwrap().port());
    let calls: Arc<Mutex<Vec<ApnsCall>>> = Arc::default();
    let log = calls.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { return };
            let (acceptor, log, public) = (acceptor.clone(), log.clone(), public.clone());
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(tcp).await else { return };
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let (log, public) = (log.clone(), public.clone());
                        async move {
                            use http_body_util::BodyExt;
                            let http2 = req.version() == hyper::Version::HTTP_2;
                            let token = req
                                .uri()
                                .path()
                                .strip_prefix("/3/device/")
                                .unwrap_or_default()
                                .to_owned();
                            let headers = req.headers().clone();
                            let jwt = headers
                                .get("authorization")
                                .and_then(|v| v.to_str().ok())
                                .and_then(|v| v.strip_prefix("bearer "))
                                .unwrap_or_default()
                                .to_owned();
                            let mut v = Validation::new(Algorithm::ES256);
                            v.set_issuer(&["TEAM123"]);
                            v.set_required_spec_claims(&["iss", "iat"]);
                            v.validate_exp = false;
                            let jwt_ok = jsonwebtoken::decode_header(&jwt)
                                .is_ok_and(|h| h.kid.as_deref() == Some("KEY123"))
                                && jsonwebtoken::decode::<Value>(&jwt, &public, &v).is_ok();
                            let body = req
                                .into_body()
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                            let topic_ok =
                                headers.get("apns-topic").is_some_and(|t| t == "chat.natter.app");
                            log.lock().unwrap().push(ApnsCall {
                                token: token.clone(),
                                http2,
                                jwt_ok,
                                headers,
                                body,
                            });
                            let (status, reason) = if !jwt_ok {
                                (403, Some("InvalidProviderToken"))
                            } else if !topic_ok {
                                (400, Some("TopicDisallowed"))
                            } else if token.starts_with("dead") {
                                (410, Some("Unregistered"))
                            } else if token.starts_with("bad") {
                                (400, Some("BadDeviceToken"))
                            } else {
                                (200, None)
                            };
                            let body = reason
                                .map(|r| {
                                    json!({"reason": r, "timestamp": 1_700_000_000_000u64})
                                        .to_string()
                                })
                                .unwrap_or_default();
                            let mut res = hyper::Response::new(http_body_util::Full::new(
                                axum::body::Bytes::from(body),
                            ));
                            *res.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                            res.headers_mut().insert(
                                "apns-id",
                                hyper::header::HeaderValue::from_static("0000-1111"),
                            );
                            Ok::<_, std::convert::Infallible>(res)
                        }
                    },
                );
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (base, ca, key_file, calls)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apns_over_http2_with_a_provider_token_and_apples_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let (base, ca, key_file, calls) = apns(dir.path()).await;
    let server = TestServer::start_with(move |c| {
        c.push.window_ms = 300;
        c.limits.receipt_flush_ms = 20;
        c.push.apns = Some(natter_server::config::ApnsSettings {
            key_file,
            key_id: "KEY123".into(),
            team_id: "TEAM123".into(),
            topic: "chat.natter.app".into(),
            base_url: base,
            ca_file: Some(ca),
        });
    })
    .await;
    let [alice, bob, carol, dan] = server.users(["alice", "bob", "carol", "dan"]).await;
    let ab = server.create_direct(&alice, &bob).await;
    let ac = server.create_direct(&alice, &carol).await;
    let ad = server.create_direct(&alice, &dan).await;
    let bob_phone = "a1b2".repeat(16);
    register(&server, &bob, json!({"provider": "apns", "token": bob_phone})).await;
    register(
        &server,
        &carol,
        json!({"provider": "apns", "token": format!("dead{}", "0".repeat(60))}),
    )
    .await;
    register(&server, &dan, json!({"provider": "apns", "token": format!("bad{}", "0".repeat(61))}))
        .await;
    let (status, _) = server
        .call(
            Method::POST,
            "/v1/me/push",
            Some(&bob.token),
            Some(&json!({"provider": "apns", "token": "../../x"})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "a device token is hex");

    let seq = server.send_rest(&alice, ab, "p1", "hi bob").await.seq;
    let got = wait_log("APNs calls", &calls, 1).await;
    let call = &got[0];
    assert_eq!(call.token, bob_phone);
    assert!(call.http2, "APNs is HTTP/2");
    assert!(call.jwt_ok, "a valid provider token");
    assert_eq!(call.headers["apns-push-type"], "alert");
    assert_eq!(call.headers["apns-collapse-id"], format!("c{ab}").as_str());
    assert_eq!(call.headers["apns-priority"], "10");
    assert_eq!(call.body["aps"]["alert"]["body"], "hi bob");
    assert_eq!(call.body["aps"]["alert"]["title"], "alice");
    assert_eq!(call.body["natter"]["last_seq"], seq);

    // Read elsewhere: a background push clears it.
    read_up_to(&server, &bob, ab, seq).await;
    let got = wait_log("APNs calls", &calls, 2).await;
    assert_eq!(got[1].headers["apns-push-type"], "background");
    assert_eq!(got[1].body["aps"]["content-available"], 1);
    assert_eq!(got[1].body["natter"]["kind"], "clear");

    // 410 Unregistered and 400 BadDeviceToken: both tokens go after one call each.
    server.send_rest(&alice, ac, "p2", "hi carol").await;
    server.send_rest(&alice, ad, "p3", "hi dan").await;
    wait_unregistered(&server, &carol).await;
    wait_unregistered(&server, &dan).await;
    server.send_rest(&alice, ac, "p4", "again").await;
    server.send_rest(&alice, ab, "p5", "a barrier").await;
    let got = wait_log("APNs calls", &calls, 5).await;
    let to = |prefix: &str| got.iter().filter(|c| c.token.starts_with(prefix)).count();
    assert_eq!((to("dead"), to("bad")), (1, 1), "each dead token was called once");
    assert!(got.iter().all(|c| c.jwt_ok && c.http2));
}

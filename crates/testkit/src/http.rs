//! One node as a client reaches it: [`Endpoint`], its address and an HTTP client, with the
//! REST helpers (accounts, conversations, entries, history) and long polling. The
//! WebSocket and SSE connections it opens are in `ws.rs` and `sse.rs`, the fixtures built
//! on it in `fixtures.rs`. Every request is bounded by [`WAIT`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use natter_proto::rest::{
    CreateConversation, CreatedConversation, Credentials, EntryPage, PollRequest, PollResponse,
    PostEntry, Session, User,
};
use natter_proto::{Ack, ConversationId, ConversationSummary, Entry, NewEntry, Seq};
use reqwest::StatusCode;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::fixtures::{PASSWORD, TestUser};
use crate::wait::{WAIT, within};

/// A node's address and an HTTP client for it: a [`TestServer`](crate::TestServer) derefs
/// to one, and `Endpoint::new` reaches anything else that speaks Natter (a process node, a
/// load balancer in front of several).
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub http: reqwest::Client,
}

impl Endpoint {
    pub fn new(addr: SocketAddr) -> Endpoint {
        Endpoint { addr, http: reqwest::Client::new() }
    }

    /// `http://ADDR`: what the SDK takes.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `http://ADDR{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/v1/ws", self.addr)
    }

    /// A JSON request; returns the status and the parsed body (`Value::Null` when empty, a
    /// string when it is not JSON).
    pub async fn call<B: Serialize>(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<&B>,
    ) -> (StatusCode, serde_json::Value) {
        let mut req = self.http.request(method, self.url(path));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        if let Some(body) = body {
            req = req.json(body);
        }
        let res = within("an HTTP response", req.send()).await.expect("HTTP request failed");
        let status = res.status();
        let bytes = within("an HTTP body", res.bytes()).await.expect("HTTP body");
        let json = if bytes.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|_| {
                serde_json::Value::String(String::from_utf8_lossy(&bytes).into_owned())
            })
        };
        (status, json)
    }

    /// A request expected to succeed with `status`, parsed as `R`.
    pub async fn ok<B: Serialize, R: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<&B>,
        status: StatusCode,
    ) -> R {
        let (got, json) = self.call(method, path, Some(token), body).await;
        assert_eq!(got, status, "{path}: {json}");
        serde_json::from_value(json).expect("response body parses")
    }

    /// `GET {path}` without a token: the status code and the body's text.
    pub async fn get(&self, path: &str) -> (u16, String) {
        let res = within(path, self.http.get(self.url(path)).send())
            .await
            .unwrap_or_else(|e| panic!("GET {path} via {}: {e}", self.addr));
        let status = res.status().as_u16();
        (status, within("a body", res.text()).await.expect("body"))
    }

    /// `GET /metrics` with the test nodes' token: the Prometheus text.
    pub async fn metrics(&self) -> String {
        let (status, body) = self
            .call::<()>(reqwest::Method::GET, "/metrics", Some(crate::METRICS_TOKEN), None)
            .await;
        assert_eq!(status, StatusCode::OK, "GET /metrics: {body}");
        body.as_str().expect("metrics are text").to_owned()
    }

    /// The value of the Prometheus sample `natter_<name>` on `/metrics` (0 when absent).
    /// Metrics are shared by every in-process server of a test binary.
    pub async fn metric(&self, name: &str) -> f64 {
        let text = self.metrics().await;
        let prefix = format!("natter_{name} ");
        text.lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .map_or(0.0, |v| v.trim().parse().expect("a number"))
    }

    /// A POST of credentials that waits out `too_many_requests` (many concurrent logins
    /// from this one address fill its share of the password-hashing queue) as the server's
    /// `retry_after_ms` says.
    async fn post_credentials(
        &self,
        path: &str,
        creds: &Credentials,
    ) -> (StatusCode, serde_json::Value) {
        for _ in 0..100 {
            let (status, json) = self.call(reqwest::Method::POST, path, None, Some(creds)).await;
            if status != StatusCode::TOO_MANY_REQUESTS {
                return (status, json);
            }
            let wait = json["retry_after_ms"].as_u64().expect("a 429 says when to retry");
            tokio::time::sleep(Duration::from_millis(wait)).await;
        }
        panic!("{path}: still too many requests after 100 tries");
    }

    /// Registers `handle` (password [`PASSWORD`]) and logs in one device.
    pub async fn user(&self, handle: &str) -> TestUser {
        let creds =
            Credentials { handle: handle.to_owned(), password: PASSWORD.to_owned(), device: None };
        let (status, json) = self.post_credentials("/v1/accounts", &creds).await;
        assert_eq!(status, StatusCode::CREATED, "register {handle} via {}: {json}", self.addr);
        let user: User = serde_json::from_value(json).expect("user");
        let session = self.session(handle).await;
        assert_eq!(session.user_id, user.user_id, "{handle} logs in as the user registered");
        TestUser { id: user.user_id, handle: handle.to_owned(), token: session.token }
    }

    /// Logs in another device of an existing user; returns its token.
    pub async fn login(&self, handle: &str) -> String {
        self.session(handle).await.token
    }

    /// Logs in another device of an existing user.
    pub async fn session(&self, handle: &str) -> Session {
        let creds = Credentials {
            handle: handle.to_owned(),
            password: PASSWORD.to_owned(),
            device: Some("test".to_owned()),
        };
        let (status, json) = self.post_credentials("/v1/sessions", &creds).await;
        assert_eq!(status, StatusCode::CREATED, "login {handle} via {}: {json}", self.addr);
        serde_json::from_value(json).expect("session")
    }

    pub async fn create_direct(&self, a: &TestUser, b: &TestUser) -> ConversationId {
        let body = CreateConversation::Direct { peer: b.id };
        let (status, json) = self
            .call(reqwest::Method::POST, "/v1/conversations", Some(&a.token), Some(&body))
            .await;
        assert!(status.is_success(), "create direct: {json}");
        serde_json::from_value::<ConversationSummary>(json).expect("summary").id
    }

    /// A group `owner` created with `members`, who must all be members: contacts of the
    /// owner (see [`Endpoint::contacts`]); panics if anyone was only invited.
    pub async fn create_group(
        &self,
        owner: &TestUser,
        title: &str,
        members: &[&TestUser],
    ) -> ConversationId {
        let created = self.create_group_inviting(owner, title, members).await;
        assert!(
            created.invited.is_empty(),
            "{:?} share no conversation with {}: invited, not added (make them contacts first)",
            created.invited,
            owner.handle
        );
        created.conversation.id
    }

    /// A group `owner` created naming `members`: the owner's contacts among them are
    /// members, the others invited (`invited`).
    pub async fn create_group_inviting(
        &self,
        owner: &TestUser,
        title: &str,
        members: &[&TestUser],
    ) -> CreatedConversation {
        let body = CreateConversation::Group {
            title: title.to_owned(),
            members: members.iter().map(|m| m.id).collect(),
        };
        self.ok(
            reqwest::Method::POST,
            "/v1/conversations",
            &owner.token,
            Some(&body),
            StatusCode::CREATED,
        )
        .await
    }

    /// A group `owner` created naming `members`, every one of whom is a member after it: the
    /// owner's contacts at once (in `created`), the others by accepting their invitation (a
    /// `member_added` entry each, in the order of `members`). For groups of strangers too
    /// many to make contacts of first (creating conversations is rate-limited).
    pub async fn create_group_joined(
        &self,
        owner: &TestUser,
        title: &str,
        members: &[&TestUser],
    ) -> ConversationId {
        let created = self.create_group_inviting(owner, title, members).await;
        let conv = created.conversation.id;
        for member in members.iter().filter(|m| created.invited.contains(&m.id)) {
            self.accept_invitation(member, conv).await;
        }
        conv
    }

    /// `user` accepts their invitation to `conv`; the ack of the `member_added` entry.
    pub async fn accept_invitation(&self, user: &TestUser, conv: ConversationId) -> Ack {
        let path = format!("/v1/invitations/{conv}/accept");
        self.ok::<(), _>(reqwest::Method::POST, &path, &user.token, None, StatusCode::CREATED).await
    }

    /// Appends over REST; returns the status and body.
    pub async fn post_entry(
        &self,
        user: &TestUser,
        conv: ConversationId,
        client_msg_id: &str,
        entry: NewEntry,
    ) -> (StatusCode, serde_json::Value) {
        let body = PostEntry { client_msg_id: client_msg_id.to_owned(), entry };
        let path = format!("/v1/conversations/{conv}/entries");
        self.call(reqwest::Method::POST, &path, Some(&user.token), Some(&body)).await
    }

    /// Sends a message over REST and returns its ack.
    pub async fn send_rest(
        &self,
        user: &TestUser,
        conv: ConversationId,
        client_msg_id: &str,
        body: &str,
    ) -> Ack {
        let entry = NewEntry::Message {
            body: body.to_owned(),
            reply_to: None,
            attachments: Vec::new(),
            mentions: Vec::new(),
        };
        let (status, json) = self.post_entry(user, conv, client_msg_id, entry).await;
        assert_eq!(status, StatusCode::CREATED, "send: {json}");
        serde_json::from_value(json).expect("ack")
    }

    /// Every entry of a conversation through REST history pages of `page` entries, oldest
    /// first, walking forwards with `after`.
    pub async fn all_entries(
        &self,
        user: &TestUser,
        conv: ConversationId,
        page: u32,
    ) -> Vec<Entry> {
        let mut out: Vec<Entry> = Vec::new();
        loop {
            let after = out.last().map_or(0, |e| e.seq);
            let path = format!("/v1/conversations/{conv}/entries?after={after}&limit={page}");
            let res: EntryPage = self
                .ok::<(), _>(reqwest::Method::GET, &path, &user.token, None, StatusCode::OK)
                .await;
            assert_eq!(res.conversation, conv, "a history page of the conversation asked for");
            out.extend(res.entries);
            if !res.has_more {
                return out;
            }
        }
    }

    /// One long-poll request (`POST /v1/poll`); panics unless it answers 200. The HTTP wait
    /// is the poll's own timeout plus [`WAIT`].
    pub async fn poll(
        &self,
        user: &TestUser,
        stream: Option<u64>,
        cursors: &BTreeMap<ConversationId, Seq>,
        timeout_ms: Option<u64>,
        limit: Option<u32>,
    ) -> PollResponse {
        let body = PollRequest { stream, cursors: cursors.clone(), timeout_ms, limit };
        let wait = WAIT + Duration::from_millis(timeout_ms.unwrap_or(0));
        let req = self.http.post(self.url("/v1/poll")).bearer_auth(&user.token).json(&body);
        // A poll may answer only when its own timeout passes: bound the whole exchange.
        let (status, bytes) = tokio::time::timeout(wait, async {
            let res = req.send().await.expect("poll failed");
            (res.status(), res.bytes().await.expect("poll body"))
        })
        .await
        .expect("poll timed out");
        assert_eq!(status, StatusCode::OK, "poll: {}", String::from_utf8_lossy(&bytes));
        serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            panic!("poll response does not parse ({e}): {}", String::from_utf8_lossy(&bytes))
        })
    }
}

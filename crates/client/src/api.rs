//! REST calls under `/v1/`: accounts and sessions, conversations and members, invitations,
//! history pages, cursors. Stateless request/response; the live side is [`crate::Client`].

use natter_proto::rest::{
    AddMember, AddedMember, ConversationPage, CreateConversation, CreatedConversation, Credentials,
    EntryPage, Invitations, Me, Member, PostEntry, ProfileUpdate, Receipts, Session, SetCursors,
    UpdateConversation, UpdateMember, User, Users,
};
use natter_proto::{
    Ack, ConversationId, ConversationSummary, ErrorBody, ErrorCode, Invitation, NewEntry, Receipt,
    Role, Seq, UserId,
};
use reqwest::Method;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};

/// Which page of a conversation's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HistoryRange {
    /// The newest entries.
    #[default]
    Latest,
    /// The newest entries before this `seq` (walking back).
    Before(Seq),
    /// The oldest entries after this `seq` (walking forward).
    After(Seq),
}

impl HistoryRange {
    pub(crate) fn split(self) -> (Option<Seq>, Option<Seq>) {
        match self {
            HistoryRange::Latest => (None, None),
            HistoryRange::Before(s) => (Some(s), None),
            HistoryRange::After(s) => (None, Some(s)),
        }
    }
}

/// A REST client for one server, with or without a token. Cheap to clone.
#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
    base_url: String,
    token: Option<String>,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api")
            .field("base_url", &self.base_url)
            .field("token", &self.token.as_ref().map(|_| "…"))
            .finish()
    }
}

impl Api {
    /// A client for the server at `base_url` (`http://host:port`), with no token yet.
    /// This build speaks plain HTTP only: put TLS in front of both ends if needed.
    pub fn new(base_url: impl Into<String>) -> Result<Api> {
        let base_url = base_url.into().trim_end_matches('/').to_owned();
        if !base_url.starts_with("http://") {
            return Err(Error::BadUrl(base_url));
        }
        Ok(Api { http: reqwest::Client::new(), base_url, token: None })
    }

    /// The same server, authenticated with `token`.
    pub fn with_token(&self, token: impl Into<String>) -> Api {
        Api { token: Some(token.into()), ..self.clone() }
    }

    /// The server's base URL, without a trailing `/`.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// `POST /v1/accounts`: registers `handle`.
    pub async fn register(&self, handle: &str, password: &str) -> Result<User> {
        let creds = Credentials { handle: handle.into(), password: password.into(), device: None };
        self.call(Method::POST, "/v1/accounts", &[], Some(&creds)).await
    }

    /// `POST /v1/sessions`: logs one device in; the token is in the answer (shown once).
    pub async fn login(
        &self,
        handle: &str,
        password: &str,
        device: Option<&str>,
    ) -> Result<Session> {
        let creds = Credentials {
            handle: handle.into(),
            password: password.into(),
            device: device.map(str::to_owned),
        };
        self.call(Method::POST, "/v1/sessions", &[], Some(&creds)).await
    }

    /// Registers `handle` unless it exists already, then logs in.
    pub async fn register_or_login(
        &self,
        handle: &str,
        password: &str,
        device: Option<&str>,
    ) -> Result<Session> {
        match self.register(handle, password).await {
            Ok(_) => {}
            Err(err) if err.code() == Some(ErrorCode::Conflict) => {}
            Err(err) => return Err(err),
        }
        self.login(handle, password, device).await
    }

    /// `DELETE /v1/sessions/current`: revokes this client's token.
    pub async fn logout(&self) -> Result<()> {
        self.call_empty(Method::DELETE, "/v1/sessions/current", None::<&()>).await
    }

    /// `GET /v1/me`.
    pub async fn me(&self) -> Result<Me> {
        self.call(Method::GET, "/v1/me", &[], None::<&()>).await
    }

    /// `GET /v1/users/{handle}`.
    pub async fn user(&self, handle: &str) -> Result<User> {
        self.call(Method::GET, &format!("/v1/users/{handle}"), &[], None::<&()>).await
    }

    /// `GET /v1/users?ids=`: users with their profiles, those that exist, in the order asked.
    pub async fn users(&self, ids: &[UserId]) -> Result<Vec<User>> {
        let ids = ids.iter().map(|u| u.0.to_string()).collect::<Vec<_>>().join(",");
        let found: Users =
            self.call(Method::GET, "/v1/users", &[("ids", ids)], None::<&()>).await?;
        Ok(found.users)
    }

    /// `GET /v1/users?q=`: users whose handle or display name starts with `prefix`, among
    /// those who share a conversation with the caller.
    pub async fn search_users(&self, prefix: &str) -> Result<Vec<User>> {
        let query = [("q", prefix.to_owned())];
        let found: Users = self.call(Method::GET, "/v1/users", &query, None::<&()>).await?;
        Ok(found.users)
    }

    /// `DELETE /v1/me`: deletes the account (every session ends; its messages stay).
    pub async fn delete_account(&self, password: &str) -> Result<()> {
        let body = natter_proto::rest::DeleteAccount { password: password.to_owned() };
        self.call_empty(Method::DELETE, "/v1/me", Some(&body)).await
    }

    /// `PATCH /v1/me/profile`: an absent field stays, an empty one is cleared; the profile
    /// as it is now.
    pub async fn set_profile(&self, update: &ProfileUpdate) -> Result<User> {
        self.call(Method::PATCH, "/v1/me/profile", &[], Some(update)).await
    }

    /// `POST /v1/conversations`: the direct conversation with `peer` (the existing one, if
    /// any).
    pub async fn create_direct(&self, peer: UserId) -> Result<ConversationSummary> {
        let body = CreateConversation::Direct { peer };
        self.call(Method::POST, "/v1/conversations", &[], Some(&body)).await
    }

    /// `POST /v1/conversations`: a new group owned by the caller. Those of `members` who share
    /// a conversation with the caller are members; the others are invited
    /// ([`CreatedConversation::invited`]) and join if they accept.
    pub async fn create_group(
        &self,
        title: &str,
        members: &[UserId],
    ) -> Result<CreatedConversation> {
        let body = CreateConversation::Group { title: title.into(), members: members.to_vec() };
        self.call(Method::POST, "/v1/conversations", &[], Some(&body)).await
    }

    /// `GET /v1/conversations`: most recent activity first; pass `next` as `before`.
    pub async fn conversations(
        &self,
        limit: Option<u32>,
        before: Option<&str>,
    ) -> Result<ConversationPage> {
        let mut query = Vec::new();
        if let Some(limit) = limit {
            query.push(("limit", limit.to_string()));
        }
        if let Some(before) = before {
            query.push(("before", before.to_owned()));
        }
        self.call(Method::GET, "/v1/conversations", &query, None::<&()>).await
    }

    /// `GET /v1/conversations/{id}`.
    pub async fn conversation(&self, conv: ConversationId) -> Result<ConversationSummary> {
        self.call(Method::GET, &format!("/v1/conversations/{conv}"), &[], None::<&()>).await
    }

    /// `PATCH /v1/conversations/{id}`: renames a group.
    pub async fn set_title(&self, conv: ConversationId, title: &str) -> Result<Ack> {
        let body = UpdateConversation { title: title.into() };
        self.call(Method::PATCH, &format!("/v1/conversations/{conv}"), &[], Some(&body)).await
    }

    /// `GET /v1/conversations/{id}/members`.
    pub async fn members(&self, conv: ConversationId) -> Result<Vec<Member>> {
        let path = format!("/v1/conversations/{conv}/members");
        self.call(Method::GET, &path, &[], None::<&()>).await
    }

    /// `POST /v1/conversations/{id}/members`: a member at once if they share a conversation
    /// with the caller ([`AddedMember::Member`]), else invited ([`AddedMember::Invited`]).
    pub async fn add_member(
        &self,
        conv: ConversationId,
        user: UserId,
        role: Option<Role>,
    ) -> Result<AddedMember> {
        let path = format!("/v1/conversations/{conv}/members");
        self.call(Method::POST, &path, &[], Some(&AddMember { user_id: user, role })).await
    }

    /// `GET /v1/invitations`: the caller's pending invitations to groups, oldest first.
    pub async fn invitations(&self) -> Result<Vec<Invitation>> {
        let res: Invitations = self.call(Method::GET, "/v1/invitations", &[], None::<&()>).await?;
        Ok(res.invitations)
    }

    /// `POST /v1/invitations/{id}/accept`: joins the group; the ack of the `member_added`
    /// entry.
    pub async fn accept_invitation(&self, conv: ConversationId) -> Result<Ack> {
        let path = format!("/v1/invitations/{conv}/accept");
        self.call(Method::POST, &path, &[], None::<&()>).await
    }

    /// `DELETE /v1/invitations/{id}`: declines (deletes) the invitation.
    pub async fn decline_invitation(&self, conv: ConversationId) -> Result<()> {
        self.call_empty(Method::DELETE, &format!("/v1/invitations/{conv}"), None::<&()>).await
    }

    /// `PATCH /v1/conversations/{id}/members/{user}`.
    pub async fn set_role(&self, conv: ConversationId, user: UserId, role: Role) -> Result<Ack> {
        let path = format!("/v1/conversations/{conv}/members/{user}");
        self.call(Method::PATCH, &path, &[], Some(&UpdateMember { role })).await
    }

    /// `DELETE /v1/conversations/{id}/members/{user}`: removes a member (yourself: leave).
    pub async fn remove_member(&self, conv: ConversationId, user: UserId) -> Result<Ack> {
        let path = format!("/v1/conversations/{conv}/members/{user}");
        self.call(Method::DELETE, &path, &[], None::<&()>).await
    }

    /// `GET /v1/conversations/{id}/entries`: one page of the log, in ascending `seq`.
    pub async fn history(
        &self,
        conv: ConversationId,
        range: HistoryRange,
        limit: Option<u32>,
    ) -> Result<EntryPage> {
        let (before, after) = range.split();
        let query: Vec<(&str, String)> = [("before", before), ("after", after)]
            .into_iter()
            .filter_map(|(k, v)| Some((k, v?.to_string())))
            .chain(limit.map(|l| ("limit", l.to_string())))
            .collect();
        let path = format!("/v1/conversations/{conv}/entries");
        self.call(Method::GET, &path, &query, None::<&()>).await
    }

    /// `POST /v1/conversations/{id}/entries`: one append over HTTP, idempotent by
    /// `client_msg_id` like the WebSocket `send` (no outbox: the caller retries).
    pub async fn post_entry(
        &self,
        conv: ConversationId,
        client_msg_id: &str,
        entry: NewEntry,
    ) -> Result<Ack> {
        let body = PostEntry { client_msg_id: client_msg_id.into(), entry };
        let path = format!("/v1/conversations/{conv}/entries");
        self.call(Method::POST, &path, &[], Some(&body)).await
    }

    /// `PUT /v1/conversations/{id}/cursors`.
    pub async fn set_cursors(
        &self,
        conv: ConversationId,
        delivered_seq: Option<Seq>,
        read_seq: Option<Seq>,
    ) -> Result<()> {
        let body = SetCursors { delivered_seq, read_seq };
        let path = format!("/v1/conversations/{conv}/cursors");
        self.call_empty(Method::PUT, &path, Some(&body)).await
    }

    /// `GET /v1/conversations/{id}/receipts`: every member's cursors.
    pub async fn receipts(&self, conv: ConversationId) -> Result<Vec<Receipt>> {
        let path = format!("/v1/conversations/{conv}/receipts");
        let res: Receipts = self.call(Method::GET, &path, &[], None::<&()>).await?;
        Ok(res.receipts)
    }

    pub(crate) fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// A request to `path`, with the token if there is one.
    pub(crate) fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let req = self.http.request(method, format!("{}{path}", self.base_url));
        match &self.token {
            Some(token) => req.bearer_auth(token),
            None => req,
        }
    }

    /// A JSON answer, or the server's refusal.
    pub(crate) async fn parse<R: DeserializeOwned>(&self, res: reqwest::Response) -> Result<R> {
        let status = res.status();
        let bytes = res.bytes().await.map_err(Error::Http)?;
        if !status.is_success() {
            return Err(refusal(status, &bytes));
        }
        serde_json::from_slice(&bytes)
            .map_err(|err| Error::Protocol(format!("answer does not parse: {err}")))
    }

    pub(crate) async fn send<B: Serialize>(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&B>,
    ) -> Result<Vec<u8>> {
        let mut req = self.request(method, path);
        if !query.is_empty() {
            req = req.query(query);
        }
        if let Some(body) = body {
            req = req.json(body);
        }
        let res = req.send().await.map_err(Error::Http)?;
        let status = res.status();
        let bytes = res.bytes().await.map_err(Error::Http)?;
        if status.is_success() {
            return Ok(bytes.to_vec());
        }
        Err(refusal(status, &bytes))
    }

    pub(crate) async fn call<B: Serialize, R: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&B>,
    ) -> Result<R> {
        let bytes = self.send(method, path, query, body).await?;
        serde_json::from_slice(&bytes)
            .map_err(|err| Error::Protocol(format!("{path}: answer does not parse: {err}")))
    }

    pub(crate) async fn call_empty<B: Serialize>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<()> {
        self.send(method, path, &[], body).await.map(|_| ())
    }
}

/// The error an unsuccessful answer carries.
pub(crate) fn refusal(status: reqwest::StatusCode, bytes: &[u8]) -> Error {
    match serde_json::from_slice::<ErrorBody>(bytes) {
        Ok(body) => Error::Server(body),
        Err(_) => Error::Protocol(format!("HTTP {status}: {}", String::from_utf8_lossy(bytes))),
    }
}

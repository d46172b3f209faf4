//! Configuration: one typed [`Config`], loaded once at startup and passed down.
//!
//! Sources, later ones winning: built-in defaults, a TOML file (`--config`), `NATTER_*`
//! environment variables, command-line flags. Every cap in [`Limits`] has all four, generated
//! from one list by the `limits!` macro so that none can be forgotten.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

mod file;

pub use file::default_toml;

macro_rules! limits {
    ($( $(#[doc = $doc:literal])* $name:ident : $ty:ty = $default:expr, $env:literal; )*) => {
        /// Every cap the server enforces. Defaults suit a single node on a laptop.
        #[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
        #[serde(default, deny_unknown_fields)]
        pub struct Limits {
            $( $(#[doc = $doc])* pub $name: $ty, )*
        }

        impl Default for Limits {
            fn default() -> Self {
                Limits { $( $name: $default, )* }
            }
        }

        /// Command-line and environment overrides for [`Limits`].
        #[derive(Debug, Clone, Default, clap::Args)]
        pub struct LimitArgs {
            $( $(#[doc = $doc])* #[arg(long, env = $env)] pub $name: Option<$ty>, )*
        }

        impl LimitArgs {
            fn apply(&self, limits: &mut Limits) {
                $( if let Some(v) = self.$name { limits.$name = v; } )*
            }
        }
    };
}

limits! {
    /// Largest WebSocket message or frame accepted, in bytes (larger: closed with 1009).
    max_frame_bytes: usize = 64 * 1024, "NATTER_MAX_FRAME_BYTES";
    /// Largest REST request body, in bytes.
    max_http_body_bytes: usize = 256 * 1024, "NATTER_MAX_HTTP_BODY_BYTES";
    /// Largest message text, in bytes of UTF-8.
    max_body_bytes: usize = 16 * 1024, "NATTER_MAX_BODY_BYTES";
    /// Longest `client_msg_id`, in bytes.
    max_client_msg_id_bytes: usize = 128, "NATTER_MAX_CLIENT_MSG_ID_BYTES";
    /// Longest group title, in bytes.
    max_title_bytes: usize = 256, "NATTER_MAX_TITLE_BYTES";
    /// Longest reaction, in bytes.
    max_emoji_bytes: usize = 64, "NATTER_MAX_EMOJI_BYTES";
    /// Most members in a group, owner included.
    max_group_members: u32 = 1000, "NATTER_MAX_GROUP_MEMBERS";
    /// Entries per page when a request does not say (history, sync).
    default_page: u32 = 100, "NATTER_DEFAULT_PAGE";
    /// Most entries (or conversations) one page may ask for.
    max_page: u32 = 500, "NATTER_MAX_PAGE";
    /// Frames queued for one session before it is dropped as a slow consumer.
    outbound_queue: usize = 4096, "NATTER_OUTBOUND_QUEUE";
    /// Requests one session may have in flight before its reads pause.
    max_in_flight: usize = 256, "NATTER_MAX_IN_FLIGHT";
    /// Appends (messages, edits, deletions, reactions) one user may make per second on
    /// average, over all their sessions and REST (0: unlimited; then `too_many_requests`).
    send_per_sec: u32 = 100, "NATTER_SEND_PER_SEC";
    /// Appends one user may make at once before `send_per_sec` applies.
    send_burst: u32 = 1_000, "NATTER_SEND_BURST";
    /// Typing reports one user may make per second (0: unlimited).
    typing_per_sec: u32 = 5, "NATTER_TYPING_PER_SEC";
    /// Typing reports one user may make at once.
    typing_burst: u32 = 20, "NATTER_TYPING_BURST";
    /// Delivered/read cursor reports one user may make per second (0: unlimited).
    cursor_per_sec: u32 = 50, "NATTER_CURSOR_PER_SEC";
    /// Cursor reports one user may make at once.
    cursor_burst: u32 = 500, "NATTER_CURSOR_BURST";
    /// Conversations one user may create per minute (0: unlimited).
    create_per_min: u32 = 60, "NATTER_CREATE_PER_MIN";
    /// Conversations one user may create at once.
    create_burst: u32 = 30, "NATTER_CREATE_BURST";
    /// Members one user may add to groups per minute (0: unlimited).
    member_adds_per_min: u32 = 120, "NATTER_MEMBER_ADDS_PER_MIN";
    /// Members one user may add at once.
    member_adds_burst: u32 = 100, "NATTER_MEMBER_ADDS_BURST";
    /// Searches (of users, `GET /v1/users?q=`, and of messages, `GET /v1/search`) one user
    /// may make per minute (0: unlimited).
    search_per_min: u32 = 60, "NATTER_SEARCH_PER_MIN";
    /// Searches one user may make at once.
    search_burst: u32 = 20, "NATTER_SEARCH_BURST";
    /// Longest a group admin may mute a member for, in seconds (a year).
    max_mute_secs: u64 = 31_536_000, "NATTER_MAX_MUTE_SECS";
    /// Reports (`POST /v1/reports`) one user may file per hour (0: unlimited).
    reports_per_hour: u32 = 30, "NATTER_REPORTS_PER_HOUR";
    /// Reports one user may file at once.
    reports_burst: u32 = 10, "NATTER_REPORTS_BURST";
    /// Most users one user may block.
    max_blocks: u32 = 1_000, "NATTER_MAX_BLOCKS";
    /// Data exports (`GET /v1/me/export`) one user may make per hour (0: unlimited).
    exports_per_hour: u32 = 4, "NATTER_EXPORTS_PER_HOUR";
    /// Data exports one user may make at once.
    exports_burst: u32 = 2, "NATTER_EXPORTS_BURST";
    /// Whether user search (`GET /v1/users?q=`) finds everyone, not only the users who
    /// share a conversation with the searcher.
    user_directory: bool = false, "NATTER_USER_DIRECTORY";
    /// How long a deleted account's handle stays reserved before anyone may register it, in
    /// seconds (freed by the node's hourly housekeeping, with the media collection).
    deleted_handle_grace_secs: u64 = 30 * 24 * 3600, "NATTER_DELETED_HANDLE_GRACE_SECS";
    /// Longest display name, in characters.
    max_display_name_chars: usize = 64, "NATTER_MAX_DISPLAY_NAME_CHARS";
    /// Longest status text, in characters.
    max_status_chars: usize = 140, "NATTER_MAX_STATUS_CHARS";
    /// Request frames one WebSocket connection may send per second (0: unlimited).
    frames_per_sec: u32 = 1_000, "NATTER_FRAMES_PER_SEC";
    /// Request frames one connection may send at once.
    frames_burst: u32 = 5_000, "NATTER_FRAMES_BURST";
    /// Time a WebSocket has to authenticate, in milliseconds.
    auth_timeout_ms: u64 = 10_000, "NATTER_AUTH_TIMEOUT_MS";
    /// Interval of server pings on idle sessions, in milliseconds.
    ping_interval_ms: u64 = 20_000, "NATTER_PING_INTERVAL_MS";
    /// A session that sends nothing (not even a pong) this long is closed, in milliseconds.
    idle_timeout_ms: u64 = 60_000, "NATTER_IDLE_TIMEOUT_MS";
    /// Cursor reports are coalesced and written once per this window, in milliseconds.
    receipt_flush_ms: u64 = 250, "NATTER_RECEIPT_FLUSH_MS";
    /// A typing indicator is forwarded at most once per this window, in milliseconds.
    typing_throttle_ms: u64 = 2_000, "NATTER_TYPING_THROTTLE_MS";
    /// A typing indicator lapses this long after the client's last report, in milliseconds.
    typing_ttl_ms: u64 = 6_000, "NATTER_TYPING_TTL_MS";
    /// Presence changes are batched into one frame per session per window, in milliseconds.
    presence_batch_ms: u64 = 1_000, "NATTER_PRESENCE_BATCH_MS";
    /// A user whose last session ended turns offline after this, in milliseconds (damping).
    presence_grace_ms: u64 = 3_000, "NATTER_PRESENCE_GRACE_MS";
    /// Most users one session may watch.
    max_presence_subscriptions: usize = 256, "NATTER_MAX_PRESENCE_SUBSCRIPTIONS";
    /// Longest wait of one long-poll request, in milliseconds.
    max_poll_timeout_ms: u64 = 30_000, "NATTER_MAX_POLL_TIMEOUT_MS";
    /// A long-poll stream with no request for this long ends, in milliseconds.
    http_stream_ttl_ms: u64 = 30_000, "NATTER_HTTP_STREAM_TTL_MS";
    /// Shortest and longest handle, in characters.
    max_handle_chars: usize = 32, "NATTER_MAX_HANDLE_CHARS";
    /// Shortest password accepted, in characters.
    min_password_chars: usize = 8, "NATTER_MIN_PASSWORD_CHARS";
    /// Longest password accepted, in bytes (argon2 input is capped to bound its cost).
    max_password_bytes: usize = 1024, "NATTER_MAX_PASSWORD_BYTES";
    /// Largest upload of any type, in bytes (then `too_large`).
    max_upload_bytes: u64 = 256 * 1024 * 1024, "NATTER_MAX_UPLOAD_BYTES";
    /// Largest image upload, in bytes: images are decoded for their thumbnail.
    max_image_bytes: u64 = 25 * 1024 * 1024, "NATTER_MAX_IMAGE_BYTES";
    /// Bytes of uploads one user may keep stored (then `quota_exceeded`).
    media_quota_bytes: u64 = 2 * 1024 * 1024 * 1024, "NATTER_MEDIA_QUOTA_BYTES";
    /// Uploads one user may start per minute (0: unlimited; then `too_many_requests`).
    media_uploads_per_min: u32 = 60, "NATTER_MEDIA_UPLOADS_PER_MIN";
    /// Uploads one user may start at once before `media_uploads_per_min` applies.
    media_uploads_burst: u32 = 30, "NATTER_MEDIA_UPLOADS_BURST";
    /// How long a signed download URL stays valid, in seconds.
    media_url_ttl_secs: u64 = 24 * 3600, "NATTER_MEDIA_URL_TTL_SECS";
    /// An upload no message carries is collected this long after it was made, in seconds.
    media_unattached_ttl_secs: u64 = 24 * 3600, "NATTER_MEDIA_UNATTACHED_TTL_SECS";
    /// How often unreferenced media are collected, in seconds.
    media_gc_interval_secs: u64 = 3600, "NATTER_MEDIA_GC_INTERVAL_SECS";
    /// Threads that hash and write uploads and decode images, apart from the threads that
    /// route messages: uploads never take more cores than this from the message path.
    media_ingest_threads: usize = 1, "NATTER_MEDIA_INGEST_THREADS";
    /// Upload bytes this node writes per second, all uploads together (0: no cap). Uploads
    /// share the disk with the store's commits; past what the disk has to spare, they would
    /// delay every message's fsync (docs/benchmarks.md, "Media").
    media_ingest_bytes_per_sec: u64 = 64 * 1024 * 1024, "NATTER_MEDIA_INGEST_BYTES_PER_SEC";
    /// PostgreSQL connections in the pool (cluster mode).
    db_pool_size: usize = 16, "NATTER_DB_POOL_SIZE";
    /// The embedded store's WAL size, in bytes, past which it is checkpointed and started over
    /// (then truncated to it): the most disk the WAL takes beyond the database under steady
    /// writes, plus what one batch writes.
    sqlite_wal_limit_bytes: u64 = 64 * 1024 * 1024, "NATTER_SQLITE_WAL_LIMIT_BYTES";
    /// A node's registry and presence entries in Redis lapse this long after its last
    /// heartbeat, in milliseconds (cluster mode).
    registry_ttl_ms: u64 = 15_000, "NATTER_REGISTRY_TTL_MS";
    /// How often a node refreshes its Redis entries and sweeps dead nodes', in milliseconds.
    heartbeat_ms: u64 = 5_000, "NATTER_HEARTBEAT_MS";
    /// Conversations with more members than this fan out on read across nodes: one
    /// publish per entry on the conversation's channel instead of one per node holding
    /// members (cluster mode).
    large_group_threshold: usize = 64, "NATTER_LARGE_GROUP_THRESHOLD";
    /// Messages waiting to be published to the bus; beyond it they are dropped and the
    /// other nodes catch up from the store.
    bus_queue: usize = 65_536, "NATTER_BUS_QUEUE";
    /// Time a connection has to send a request's headers, counted from its accept or from the
    /// end of the previous response (so idle keep-alive connections end too), in
    /// milliseconds; then it is closed without an answer.
    http_header_timeout_ms: u64 = 10_000, "NATTER_HTTP_HEADER_TIMEOUT_MS";
    /// Time a request's whole body has to arrive once its headers did, in milliseconds; then
    /// 408 `request_timeout` and the connection is closed.
    http_body_timeout_ms: u64 = 30_000, "NATTER_HTTP_BODY_TIMEOUT_MS";
    /// Open TCP connections of this node (REST, SSE, long-poll and WebSocket alike); more are
    /// closed as soon as they are accepted. Lowered at start to fit the open-file limit.
    max_connections: usize = 16_000, "NATTER_MAX_CONNECTIONS";
    /// Open TCP connections from one client address; more are closed as soon as they are
    /// accepted. 0: no cap (behind a proxy, where every client has the proxy's address).
    max_connections_per_ip: usize = 256, "NATTER_MAX_CONNECTIONS_PER_IP";
    /// Live sessions (WebSockets, SSE streams, long-poll streams) of one user on this node;
    /// more are refused (close 4029, or 429 `too_many_requests`).
    max_sessions_per_user: usize = 100, "NATTER_MAX_SESSIONS_PER_USER";
    /// Long-poll streams of one token (one device's login); a new one beyond it ends the
    /// token's least recently polled idle stream, or gets 429 when all are being polled.
    max_poll_streams_per_token: usize = 16, "NATTER_MAX_POLL_STREAMS_PER_TOKEN";
    /// Wrong passwords for one handle before its logins back off (per node).
    login_failures_per_handle: u32 = 5, "NATTER_LOGIN_FAILURES_PER_HANDLE";
    /// Failed logins from one client address before its logins back off (per node).
    login_failures_per_address: u32 = 20, "NATTER_LOGIN_FAILURES_PER_ADDRESS";
    /// The first back-off after the free failures, in milliseconds; it doubles with every
    /// further failure.
    login_backoff_ms: u64 = 1_000, "NATTER_LOGIN_BACKOFF_MS";
    /// The longest back-off, in milliseconds; a key this long without a failure (after its
    /// back-off ended) starts afresh.
    login_backoff_max_ms: u64 = 300_000, "NATTER_LOGIN_BACKOFF_MAX_MS";
    /// Password hashes one client address may have waiting (logins and registrations);
    /// beyond it, `too_many_requests`.
    max_hashes_per_address: usize = 16, "NATTER_MAX_HASHES_PER_ADDRESS";
    /// Largest sync or history reply, in bytes of JSON entries and summaries: a reply stops
    /// adding entries at this budget and says there is more (it always carries at least one
    /// entry). Well below the WebSocket write buffer (4 × max(max_frame_bytes, 1 MiB)), so
    /// every reply can be delivered.
    max_reply_bytes: usize = 256 * 1024, "NATTER_MAX_REPLY_BYTES";
    /// Most conversations with entries in one sync reply (then `more`).
    max_sync_conversations: usize = 100, "NATTER_MAX_SYNC_CONVERSATIONS";
    /// Bytes of frames queued for one session before it is dropped as a slow consumer
    /// (besides the `outbound_queue` frame count).
    outbound_queue_bytes: usize = 8 * 1024 * 1024, "NATTER_OUTBOUND_QUEUE_BYTES";
    /// Most group invitations one user may have pending; inviting them beyond it is a
    /// `conflict` (contacts are still added directly). 0: only contacts can be added.
    max_pending_invitations: u32 = 100, "NATTER_MAX_PENDING_INVITATIONS";
}

impl Limits {
    pub fn auth_timeout(&self) -> Duration {
        Duration::from_millis(self.auth_timeout_ms)
    }
    pub fn ping_interval(&self) -> Duration {
        Duration::from_millis(self.ping_interval_ms)
    }
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }
    pub fn receipt_flush(&self) -> Duration {
        Duration::from_millis(self.receipt_flush_ms)
    }
    pub fn typing_throttle(&self) -> Duration {
        Duration::from_millis(self.typing_throttle_ms)
    }
    pub fn typing_ttl(&self) -> Duration {
        Duration::from_millis(self.typing_ttl_ms)
    }
    pub fn presence_batch(&self) -> Duration {
        Duration::from_millis(self.presence_batch_ms)
    }
    pub fn presence_grace(&self) -> Duration {
        Duration::from_millis(self.presence_grace_ms)
    }
    pub fn http_stream_ttl(&self) -> Duration {
        Duration::from_millis(self.http_stream_ttl_ms)
    }
    pub fn registry_ttl(&self) -> Duration {
        Duration::from_millis(self.registry_ttl_ms)
    }
    pub fn heartbeat(&self) -> Duration {
        Duration::from_millis(self.heartbeat_ms)
    }
    pub fn http_header_timeout(&self) -> Duration {
        Duration::from_millis(self.http_header_timeout_ms)
    }
    pub fn http_body_timeout(&self) -> Duration {
        Duration::from_millis(self.http_body_timeout_ms)
    }
    pub fn login_backoff(&self) -> Duration {
        Duration::from_millis(self.login_backoff_ms)
    }
    pub fn login_backoff_max(&self) -> Duration {
        Duration::from_millis(self.login_backoff_max_ms)
    }
    /// A requested page size, defaulted and capped.
    pub fn page(&self, requested: Option<u32>) -> u32 {
        requested.unwrap_or(self.default_page).clamp(1, self.max_page)
    }
}

/// The whole configuration of one node.
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Where the embedded store keeps its files.
    pub data_dir: PathBuf,
    /// Origins allowed to open a WebSocket besides the server's own (`*` allows any).
    pub allowed_origins: Vec<String>,
    /// How long shutdown waits for sessions to close, in milliseconds (after the spread).
    pub drain_timeout_ms: u64,
    /// On SIGTERM, how long the node keeps serving with `/readyz` failing before it closes
    /// its first session, in milliseconds: longer than the balancer takes to see it (its
    /// check interval times its fall count), so that reconnects go to other nodes.
    pub drain_unready_ms: u64,
    /// On SIGTERM, the window the node's session closes are spread over, evenly, in
    /// milliseconds: the reconnect wave the other nodes see is this long.
    pub drain_spread_ms: u64,
    /// `text` or `json` logs.
    pub log_format: String,
    /// An OpenTelemetry collector to export spans to (OTLP over HTTP, `http://host:4318`).
    /// Unset: spans are only logged.
    pub otlp_endpoint: Option<String>,
    /// PostgreSQL instead of the embedded store (`postgres://user:pass@host:port/db`).
    pub database_url: Option<String>,
    /// Message search's text search configuration on PostgreSQL (`simple`, `english`,
    /// `german`, …: the language it stems words of); SQLite does not stem.
    pub search_language: String,
    /// Redis for the registry, presence and the bus between nodes (`redis://host:port`);
    /// needs `database_url`. Without it the node runs alone.
    pub redis_url: Option<String>,
    /// This node's name in the cluster (default: generated at start).
    pub node_id: Option<String>,
    /// The scheme clients reach this server by (`http`, or `https` behind a TLS proxy): a
    /// WebSocket's `Origin` is its own when scheme, host and port match.
    pub public_scheme: String,
    /// permessage-deflate on the WebSocket: `off` (never), `requested` (for connections
    /// that ask with `/v1/ws?compress=deflate` and whose client offers the extension: the
    /// web client does), or `offered` (for every client that offers it, as every browser and
    /// many libraries do by habit). Compression costs the server CPU per message and
    /// direction (docs/benchmarks.md) and saves most of the bytes of JSON frames.
    pub ws_compression: String,
    /// Take the client address from the last `X-Forwarded-For` entry (set by a proxy in
    /// front) instead of the peer address, for login limits and hash queueing.
    pub trust_forwarded_for: bool,
    /// Bearer token `GET /metrics` requires; without one, `/metrics` is off.
    pub metrics_token: Option<String>,
    /// The key that signs media download URLs (at least 32 bytes). Without one, a single
    /// node makes a random key once and keeps it in `<data_dir>/media.key`; nodes of a
    /// cluster must share one, so cluster mode requires it.
    pub media_secret: Option<String>,
    /// Where blobs live: unset, `<data_dir>/media/blobs`; `s3://bucket/prefix`, an
    /// S3-compatible store, configured by the usual `AWS_*` variables (`AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT_URL`) and `media_s3`.
    pub media_url: Option<String>,
    /// Where uploads are staged, and blobs kept when `media_url` is unset: unset,
    /// `<data_dir>/media`. On a disk of its own, uploads' writes never queue the store's
    /// commits behind them (docs/benchmarks.md, "Media").
    pub media_dir: Option<PathBuf>,
    /// S3 settings that override the `AWS_*` variables.
    pub media_s3: S3Settings,
    /// The types an upload may be, as sniffed from its bytes: `type/subtype` or `type/*`,
    /// each optionally with its own size cap in bytes (`video/*=104857600`). The first
    /// pattern that matches applies; a type no pattern matches is `unsupported_media_type`.
    pub media_types: Vec<String>,
    /// Handles of server administrators, granted at start (an unknown handle is logged and
    /// skipped). `natter admin grant HANDLE` grants (and `revoke` takes back) at any time.
    pub admins: Vec<String>,
    /// Words and patterns that refuse or flag messages, and the moderation webhook
    /// (`[content_rules]` in the file; docs/protocol.md "Content rules").
    pub content_rules: ContentRules,
    /// Push notifications (`[push]` in the file; docs/protocol.md "Push notifications").
    pub push: PushSettings,
    /// Email over SMTP: address verification and digests of unread conversations
    /// (`[email]`; docs/protocol.md "Email digests"). Unset: no email.
    pub email: Option<EmailSettings>,
    /// Caps, rates and timeouts (`[limits]`; docs/protocol.md, "Caps" and "Rate limits").
    pub limits: Limits,
}

/// Push notifications for members with no live session.
#[derive(Clone, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct PushSettings {
    /// The app's own push gateway (provider `webhook`): the server POSTs each notification
    /// there, signed with `webhook_secret`. Unset: the provider is off.
    pub webhook_url: Option<String>,
    /// Key of the gateway requests' `X-Natter-Signature` (HMAC-SHA256 of the body).
    pub webhook_secret: Option<String>,
    /// Messages to one user in one conversation within this many milliseconds of the first
    /// become one notification.
    pub window_ms: u64,
    /// What a notification shows: `preview` (sender and text), `sender`, or `none` ("new
    /// message").
    pub payload: String,
    /// Groups with more members than this push only to the members a message mentions and
    /// to the author of the message it replies to.
    pub large_group: usize,
    /// Most notifications one user gets per minute (more wait).
    pub per_user_per_min: u32,
    /// Attempts at a notification the provider keeps failing (5xx, time-outs).
    pub max_attempts: u32,
    /// How long a provider has to answer, in milliseconds.
    pub timeout_ms: u64,
    /// Web Push (`[push.webpush]`): browsers' push services, VAPID-signed, payloads
    /// encrypted to the subscription (RFC 8291). Unset: off.
    pub webpush: Option<WebPushSettings>,
    /// Firebase Cloud Messaging's HTTP v1 API (`[push.fcm]`). Unset: off.
    pub fcm: Option<FcmSettings>,
    /// Apple Push Notification service over HTTP/2 with a token key (`[push.apns]`).
    /// Unset: off.
    pub apns: Option<ApnsSettings>,
}

/// Email: the SMTP server, the sender, the links, the digests' timing and templates.
#[derive(Clone, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EmailSettings {
    /// `smtp://host:port` (plain: a relay on loopback), `smtp://host:587?tls=required`
    /// (STARTTLS) or `smtps://host:465`; credentials as `user:password@` in it.
    pub smtp_url: String,
    /// The `From` of every email: `Natter <noreply@example.com>`.
    pub from: String,
    /// This server's address as its users reach it, for the links in emails.
    pub public_url: String,
    /// A digest goes this long after the first message a user did not read.
    #[serde(default = "EmailSettings::default_delay")]
    pub digest_delay_ms: u64,
    /// At most one digest per user per this long.
    #[serde(default = "EmailSettings::default_period")]
    pub digest_period_ms: u64,
    /// How long an address verification link works, in seconds.
    #[serde(default = "EmailSettings::default_verify_ttl")]
    pub verify_ttl_secs: u64,
    /// minijinja templates replacing the built-in digest (`digest.txt` and `digest.html`
    /// in this directory; see docs/protocol.md for their variables).
    #[serde(default)]
    pub templates_dir: Option<PathBuf>,
}

impl EmailSettings {
    fn default_delay() -> u64 {
        15 * 60 * 1000
    }

    fn default_period() -> u64 {
        6 * 3600 * 1000
    }

    fn default_verify_ttl() -> u64 {
        7 * 86_400
    }
}

impl std::fmt::Debug for EmailSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The SMTP URL may hold a password: only its scheme and host.
        let host = self.smtp_url.rsplit('@').next().unwrap_or_default();
        f.debug_struct("EmailSettings")
            .field("smtp", &host)
            .field("from", &self.from)
            .field("public_url", &self.public_url)
            .field("digest_delay_ms", &self.digest_delay_ms)
            .field("digest_period_ms", &self.digest_period_ms)
            .finish_non_exhaustive()
    }
}

/// Web Push with VAPID (RFC 8292).
#[derive(Clone, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WebPushSettings {
    /// The VAPID key pair, base64url (unpadded) as `natter push vapid-keys` (or the
    /// `web-push` tools) print them: the 65-byte public point browsers subscribe with
    /// (`applicationServerKey`) and the 32-byte private scalar.
    pub vapid_public_key: String,
    pub vapid_private_key: String,
    /// Who runs this server, for the push services: `mailto:` or `https:` URL.
    pub subject: String,
    /// Hosts a subscription's endpoint may be on (the host or a subdomain of it); the
    /// server POSTs only there. Default: the push services of Chrome, Firefox, Edge and
    /// Safari. An `http:` endpoint is accepted only on a loopback address listed here.
    #[serde(default = "WebPushSettings::default_hosts")]
    pub allowed_hosts: Vec<String>,
    /// How long a push service keeps an undelivered notification, in seconds.
    #[serde(default = "WebPushSettings::default_ttl")]
    pub ttl_secs: u32,
}

impl WebPushSettings {
    fn default_hosts() -> Vec<String> {
        ["fcm.googleapis.com", "push.services.mozilla.com", "notify.windows.com", "push.apple.com"]
            .map(str::to_owned)
            .to_vec()
    }

    fn default_ttl() -> u32 {
        86_400
    }
}

/// FCM HTTP v1 with a service account (OAuth2 JWT bearer grant).
#[derive(Clone, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FcmSettings {
    /// The service account's JSON key file as Google's console downloads it
    /// (`project_id`, `client_email`, `private_key`, `private_key_id`, `token_uri`).
    pub service_account_file: PathBuf,
    /// The API's base URL.
    #[serde(default = "FcmSettings::default_base")]
    pub base_url: String,
}

impl FcmSettings {
    fn default_base() -> String {
        "https://fcm.googleapis.com".to_owned()
    }
}

/// APNs with a token signing key (`.p8`).
#[derive(Clone, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApnsSettings {
    /// The `.p8` key file (PKCS#8 PEM, P-256) from Apple's developer account.
    pub key_file: PathBuf,
    pub key_id: String,
    pub team_id: String,
    /// The app's bundle id (`apns-topic`).
    pub topic: String,
    /// `https://api.push.apple.com`, or `https://api.sandbox.push.apple.com` for
    /// development builds.
    #[serde(default = "ApnsSettings::default_base")]
    pub base_url: String,
    /// A PEM file of extra root certificates to trust for `base_url` (a proxy's, a test's).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

impl ApnsSettings {
    fn default_base() -> String {
        "https://api.push.apple.com".to_owned()
    }
}

impl Default for PushSettings {
    fn default() -> Self {
        PushSettings {
            webhook_url: None,
            webhook_secret: None,
            window_ms: 3_000,
            payload: "preview".to_owned(),
            large_group: 50,
            per_user_per_min: 30,
            max_attempts: 8,
            timeout_ms: 5_000,
            webpush: None,
            fcm: None,
            apns: None,
        }
    }
}

impl std::fmt::Debug for PushSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PushSettings")
            .field("webhook_url", &self.webhook_url)
            .field("webhook_secret", &self.webhook_secret.as_ref().map(|_| "…"))
            .field("window_ms", &self.window_ms)
            .field("payload", &self.payload)
            .field("large_group", &self.large_group)
            .field("per_user_per_min", &self.per_user_per_min)
            .field("max_attempts", &self.max_attempts)
            .field("timeout_ms", &self.timeout_ms)
            .field("webpush", &self.webpush.as_ref().map(|w| (&w.subject, &w.allowed_hosts)))
            .field("fcm", &self.fcm.as_ref().map(|f| &f.base_url))
            .field("apns", &self.apns.as_ref().map(|a| (&a.topic, &a.base_url)))
            .finish()
    }
}

/// Content rules and the moderation webhook, applied to every message and edit before it
/// is committed.
#[derive(Clone, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ContentRules {
    /// Words (matched whole, ignoring case) that refuse a message (`content_rejected`).
    pub reject_words: Vec<String>,
    /// Regular expressions (Rust `regex` syntax) that refuse a message.
    pub reject_patterns: Vec<String>,
    /// Words that let a message through and file it in the moderation queue.
    pub flag_words: Vec<String>,
    /// Regular expressions that let a message through and file it in the queue.
    pub flag_patterns: Vec<String>,
    /// A URL the server POSTs each message and edit to before committing it (after the
    /// lists); it answers `{"action": "allow" | "flag" | "reject", "reason"?}`.
    pub webhook_url: Option<String>,
    /// How long the webhook has to answer, in milliseconds (1 to 10000).
    pub webhook_timeout_ms: u64,
    /// When the webhook fails (an error, a timeout, a bad answer): refuse the message
    /// (`unavailable`, retryable) instead of letting it through.
    pub webhook_fail_closed: bool,
    /// A key the server signs each webhook body with (`X-Natter-Signature: sha256=<hex
    /// HMAC-SHA256>`), so the webhook can tell the server's calls from anyone's.
    pub webhook_secret: Option<String>,
}

impl Default for ContentRules {
    fn default() -> Self {
        ContentRules {
            reject_words: Vec::new(),
            reject_patterns: Vec::new(),
            flag_words: Vec::new(),
            flag_patterns: Vec::new(),
            webhook_url: None,
            webhook_timeout_ms: 500,
            webhook_fail_closed: false,
            webhook_secret: None,
        }
    }
}

impl std::fmt::Debug for ContentRules {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContentRules")
            .field("reject_words", &self.reject_words.len())
            .field("reject_patterns", &self.reject_patterns.len())
            .field("flag_words", &self.flag_words.len())
            .field("flag_patterns", &self.flag_patterns.len())
            .field("webhook_url", &self.webhook_url)
            .field("webhook_timeout_ms", &self.webhook_timeout_ms)
            .field("webhook_fail_closed", &self.webhook_fail_closed)
            .field("webhook_secret", &self.webhook_secret.as_ref().map(|_| "…"))
            .finish()
    }
}

/// S3 settings, each overriding its `AWS_*` variable when set.
#[derive(Clone, Default, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct S3Settings {
    /// `http(s)://host:port` of an S3-compatible server (`AWS_ENDPOINT_URL`); plain HTTP is
    /// allowed when named here.
    pub endpoint: Option<String>,
    /// The bucket's region (`AWS_REGION`).
    pub region: Option<String>,
    /// The access key's id (`AWS_ACCESS_KEY_ID`).
    pub access_key_id: Option<String>,
    /// The access key's secret (`AWS_SECRET_ACCESS_KEY`).
    pub secret_access_key: Option<String>,
}

impl std::fmt::Debug for S3Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Settings")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &self.secret_access_key.as_ref().map(|_| "…"))
            .finish()
    }
}

/// The default allow-list: pictures, sound, video, text, PDF, office documents and common
/// archives; anything else (executables, unknown binaries) is refused.
pub const DEFAULT_MEDIA_TYPES: &[&str] = &[
    "image/*",
    "video/*",
    "audio/*",
    "text/*",
    "application/pdf",
    "application/zip",
    "application/gzip",
    "application/x-tar",
    "application/x-7z-compressed",
    "application/vnd.rar",
    "application/rtf",
    "application/msword",
    "application/vnd.ms-excel",
    "application/vnd.ms-powerpoint",
    "application/vnd.openxmlformats-officedocument.*",
    "application/vnd.oasis.opendocument.*",
    "application/epub+zip",
];

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:8080".parse().expect("a valid default address"),
            data_dir: PathBuf::from("./natter-data"),
            allowed_origins: Vec::new(),
            drain_timeout_ms: 5_000,
            drain_unready_ms: 2_000,
            drain_spread_ms: 3_000,
            log_format: "text".to_owned(),
            otlp_endpoint: None,
            database_url: None,
            search_language: "simple".to_owned(),
            redis_url: None,
            node_id: None,
            public_scheme: "http".to_owned(),
            ws_compression: "requested".to_owned(),
            trust_forwarded_for: false,
            metrics_token: None,
            media_secret: None,
            media_url: None,
            media_dir: None,
            media_s3: S3Settings::default(),
            media_types: DEFAULT_MEDIA_TYPES.iter().map(|t| (*t).to_owned()).collect(),
            admins: Vec::new(),
            content_rules: ContentRules::default(),
            push: PushSettings::default(),
            email: None,
            limits: Limits::default(),
        }
    }
}

/// `natter serve` flags; each also reads its `NATTER_*` variable.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServeArgs {
    /// A TOML file with any of the settings below (flags and environment override it).
    #[arg(long, env = "NATTER_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, env = "NATTER_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Data directory of the embedded store [default: ./natter-data].
    #[arg(long, env = "NATTER_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Extra origins allowed to open WebSockets, comma-separated.
    #[arg(long, env = "NATTER_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Option<Vec<String>>,
    /// Shutdown drain timeout in milliseconds [default: 5000].
    #[arg(long, env = "NATTER_DRAIN_TIMEOUT_MS")]
    pub drain_timeout_ms: Option<u64>,
    /// On SIGTERM, milliseconds of failing /readyz before sessions close [default: 2000].
    #[arg(long, env = "NATTER_DRAIN_UNREADY_MS")]
    pub drain_unready_ms: Option<u64>,
    /// On SIGTERM, milliseconds the session closes are spread over [default: 3000].
    #[arg(long, env = "NATTER_DRAIN_SPREAD_MS")]
    pub drain_spread_ms: Option<u64>,
    /// Log format: text or json [default: text].
    #[arg(long, env = "NATTER_LOG_FORMAT")]
    pub log_format: Option<String>,
    /// OTLP/HTTP collector to export spans to (http://host:4318) [default: none].
    #[arg(long, env = "NATTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// PostgreSQL URL: store the log there instead of the embedded SQLite.
    #[arg(long, env = "NATTER_DATABASE_URL")]
    pub database_url: Option<String>,
    /// Redis URL: join a cluster (registry, presence, bus); needs --database-url.
    #[arg(long, env = "NATTER_REDIS_URL")]
    pub redis_url: Option<String>,
    /// This node's name in the cluster [default: generated].
    #[arg(long, env = "NATTER_NODE_ID")]
    pub node_id: Option<String>,
    /// Scheme clients use to reach the server, for the Origin check [default: http].
    #[arg(long, env = "NATTER_PUBLIC_SCHEME")]
    pub public_scheme: Option<String>,
    /// permessage-deflate on the WebSocket: off, requested (?compress=deflate) or offered [default: requested].
    #[arg(long, env = "NATTER_WS_COMPRESSION")]
    pub ws_compression: Option<String>,
    /// Use the last X-Forwarded-For address as the client's (behind a proxy).
    #[arg(long, env = "NATTER_TRUST_FORWARDED_FOR")]
    pub trust_forwarded_for: Option<bool>,
    /// Bearer token for GET /metrics (without it, /metrics is off).
    #[arg(long, env = "NATTER_METRICS_TOKEN")]
    pub metrics_token: Option<String>,
    /// Key that signs media download URLs, at least 32 bytes [default: kept in the data dir].
    #[arg(long, env = "NATTER_MEDIA_SECRET", hide_env_values = true)]
    pub media_secret: Option<String>,
    /// Blob storage: s3://bucket/prefix (credentials from AWS_*) [default: the data dir].
    #[arg(long, env = "NATTER_MEDIA_URL")]
    pub media_url: Option<String>,
    /// Upload staging, and local blobs [default: <data-dir>/media]; a disk of its own keeps
    /// uploads' writes away from the store's commits.
    #[arg(long, env = "NATTER_MEDIA_DIR")]
    pub media_dir: Option<PathBuf>,
    /// Upload types allowed, comma-separated `type/subtype` or `type/*`, each optionally
    /// `=max_bytes` [default: images, audio, video, text, PDF, office files, archives].
    #[arg(long, env = "NATTER_MEDIA_TYPES", value_delimiter = ',')]
    pub media_types: Option<Vec<String>>,
    /// Handles of server administrators, comma-separated, granted at start.
    #[arg(long, env = "NATTER_ADMINS", value_delimiter = ',')]
    pub admins: Option<Vec<String>>,
    /// URL of a moderation webhook called before each message commits (see the docs).
    #[arg(long, env = "NATTER_MODERATION_WEBHOOK_URL")]
    pub moderation_webhook_url: Option<String>,
    /// Key that signs the moderation webhook's requests.
    #[arg(long, env = "NATTER_MODERATION_WEBHOOK_SECRET", hide_env_values = true)]
    pub moderation_webhook_secret: Option<String>,
    #[command(flatten)]
    pub limits: LimitArgs,
}

/// A setting that cannot work: its key (`limits.max_page`, `push.payload`) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub why: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.key, self.why)
    }
}

#[derive(Default)]
struct Problems(Vec<Problem>);

impl Problems {
    fn add(&mut self, key: &str, why: String) {
        self.0.push(Problem { key: key.to_owned(), why });
    }

    fn unless(&mut self, ok: bool, key: &str, why: &str) {
        if !ok {
            self.add(key, why.to_owned());
        }
    }
}

impl Config {
    /// Where uploads are staged and local blobs kept.
    pub fn media_dir(&self) -> PathBuf {
        self.media_dir.clone().unwrap_or_else(|| self.data_dir.join("media"))
    }

    /// Builds the configuration from a file (if any) and the flag/environment overrides;
    /// fails on any problem, naming every one.
    pub fn load(args: &ServeArgs) -> anyhow::Result<Config> {
        let (cfg, problems) = Config::gather(args)?;
        if !problems.is_empty() {
            let all: Vec<String> = problems.iter().map(ToString::to_string).collect();
            match &args.config {
                Some(path) => bail!("config {}: {}", path.display(), all.join("; ")),
                None => bail!("{}", all.join("; ")),
            }
        }
        Ok(cfg)
    }

    /// The configuration from a file (if any) and the flag/environment overrides, with every
    /// problem of the file and of the result (`natter config check`). Fails only when the
    /// file cannot be read.
    pub fn gather(args: &ServeArgs) -> anyhow::Result<(Config, Vec<Problem>)> {
        let (mut cfg, mut problems) = match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading config file {}", path.display()))?;
                file::read(&text)
            }
            None => (Config::default(), Vec::new()),
        };
        if let Some(v) = args.listen {
            cfg.listen = v;
        }
        if let Some(v) = &args.data_dir {
            cfg.data_dir = v.clone();
        }
        if let Some(v) = &args.allowed_origins {
            cfg.allowed_origins = v.clone();
        }
        if let Some(v) = args.drain_timeout_ms {
            cfg.drain_timeout_ms = v;
        }
        if let Some(v) = args.drain_unready_ms {
            cfg.drain_unready_ms = v;
        }
        if let Some(v) = args.drain_spread_ms {
            cfg.drain_spread_ms = v;
        }
        if let Some(v) = &args.log_format {
            cfg.log_format = v.clone();
        }
        if let Some(v) = &args.otlp_endpoint {
            cfg.otlp_endpoint = Some(v.clone());
        }
        if let Some(v) = &args.database_url {
            cfg.database_url = Some(v.clone());
        }
        if let Some(v) = &args.redis_url {
            cfg.redis_url = Some(v.clone());
        }
        if let Some(v) = &args.node_id {
            cfg.node_id = Some(v.clone());
        }
        if let Some(v) = &args.public_scheme {
            cfg.public_scheme = v.clone();
        }
        if let Some(v) = &args.ws_compression {
            cfg.ws_compression = v.clone();
        }
        if let Some(v) = args.trust_forwarded_for {
            cfg.trust_forwarded_for = v;
        }
        if let Some(v) = &args.metrics_token {
            cfg.metrics_token = Some(v.clone());
        }
        if let Some(v) = &args.media_secret {
            cfg.media_secret = Some(v.clone());
        }
        if let Some(v) = &args.media_url {
            cfg.media_url = Some(v.clone());
        }
        if let Some(v) = &args.media_dir {
            cfg.media_dir = Some(v.clone());
        }
        if let Some(v) = &args.media_types {
            cfg.media_types = v.clone();
        }
        if let Some(v) = &args.admins {
            cfg.admins = v.clone();
        }
        if let Some(v) = &args.moderation_webhook_url {
            cfg.content_rules.webhook_url = Some(v.clone());
        }
        if let Some(v) = &args.moderation_webhook_secret {
            cfg.content_rules.webhook_secret = Some(v.clone());
        }
        args.limits.apply(&mut cfg.limits);
        problems.extend(cfg.problems());
        Ok((cfg, problems))
    }

    /// Fails fast on settings that cannot work, naming every one.
    pub fn validate(&self) -> anyhow::Result<()> {
        let problems = self.problems();
        if problems.is_empty() {
            return Ok(());
        }
        let all: Vec<String> = problems.iter().map(ToString::to_string).collect();
        bail!("{}", all.join("; "))
    }

    /// Every setting that cannot work, each under its key (`limits.max_page`).
    pub fn problems(&self) -> Vec<Problem> {
        let l = &self.limits;
        let mut p = Problems::default();
        p.unless(l.max_frame_bytes >= 1024, "limits.max_frame_bytes", "must be at least 1024");
        p.unless(
            l.max_body_bytes + 1024 <= l.max_frame_bytes,
            "limits.max_body_bytes",
            "must leave 1 KiB of max_frame_bytes for the frame around it",
        );
        for (key, v) in [
            ("presence_batch_ms", l.presence_batch_ms),
            ("receipt_flush_ms", l.receipt_flush_ms),
            ("ping_interval_ms", l.ping_interval_ms),
            ("heartbeat_ms", l.heartbeat_ms),
            ("sqlite_wal_limit_bytes", l.sqlite_wal_limit_bytes),
            ("http_header_timeout_ms", l.http_header_timeout_ms),
            ("http_body_timeout_ms", l.http_body_timeout_ms),
            ("login_backoff_ms", l.login_backoff_ms),
            ("outbound_queue", l.outbound_queue as u64),
            ("max_in_flight", l.max_in_flight as u64),
            ("max_page", u64::from(l.max_page)),
            ("db_pool_size", l.db_pool_size as u64),
            ("bus_queue", l.bus_queue as u64),
            ("max_connections", l.max_connections as u64),
            ("max_sessions_per_user", l.max_sessions_per_user as u64),
            ("max_poll_streams_per_token", l.max_poll_streams_per_token as u64),
            ("max_sync_conversations", l.max_sync_conversations as u64),
            ("media_ingest_threads", l.media_ingest_threads as u64),
            ("max_hashes_per_address", l.max_hashes_per_address as u64),
        ] {
            p.unless(v > 0, &format!("limits.{key}"), "must be positive");
        }
        p.unless(l.default_page <= l.max_page, "limits.default_page", "must not exceed max_page");
        p.unless(l.max_group_members >= 2, "limits.max_group_members", "must be at least 2");
        p.unless(
            l.registry_ttl_ms >= 2 * l.heartbeat_ms,
            "limits.registry_ttl_ms",
            "must be at least twice heartbeat_ms",
        );
        p.unless(
            (4 * 1024..=l.max_frame_bytes.max(1 << 20)).contains(&l.max_reply_bytes),
            "limits.max_reply_bytes",
            "must be from 4 KiB to max(max_frame_bytes, 1 MiB)",
        );
        p.unless(
            l.outbound_queue_bytes >= 4 * l.max_frame_bytes.max(l.max_reply_bytes),
            "limits.outbound_queue_bytes",
            "must hold at least four of the largest frames",
        );
        p.unless(
            l.login_backoff_max_ms >= l.login_backoff_ms,
            "limits.login_backoff_max_ms",
            "must be at least login_backoff_ms",
        );
        if let Err(e) = crate::moderation::ContentFilter::new(&self.content_rules) {
            p.add("content_rules", format!("{e:#}"));
        }
        p.unless(
            ["preview", "sender", "none"].contains(&self.push.payload.as_str()),
            "push.payload",
            "must be preview, sender or none",
        );
        p.unless(self.push.timeout_ms > 0, "push.timeout_ms", "must be positive");
        p.unless(self.push.max_attempts > 0, "push.max_attempts", "must be positive");
        p.unless(
            self.media_secret.as_ref().is_none_or(|s| s.len() >= 32),
            "media_secret",
            "must be at least 32 bytes",
        );
        p.unless(
            self.redis_url.is_none() || self.media_secret.is_some(),
            "media_secret",
            "cluster mode (redis_url) needs it: every node must sign and check the same URLs",
        );
        p.unless(
            self.redis_url.is_none() || self.database_url.is_some(),
            "database_url",
            "cluster mode (redis_url) needs it: nodes share one PostgreSQL",
        );
        p.unless(
            self.media_url.as_ref().is_none_or(|u| u.starts_with("s3://")),
            "media_url",
            "must be s3://bucket[/prefix]",
        );
        if let Err(e) = crate::media::TypePolicy::parse(&self.media_types, l) {
            p.add("media_types", format!("{e:#}"));
        }
        p.unless(
            !self.search_language.is_empty()
                && self.search_language.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
            "search_language",
            "must be a text search configuration's name, like english",
        );
        p.unless(
            self.node_id.as_ref().is_none_or(|id| {
                (1..=64).contains(&id.len())
                    && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            }),
            "node_id",
            "must be 1-64 characters of A-Z, a-z, 0-9, '-' and '_'",
        );
        p.unless(
            self.otlp_endpoint
                .as_ref()
                .is_none_or(|u| u.starts_with("http://") || u.starts_with("https://")),
            "otlp_endpoint",
            "must be an http:// or https:// URL",
        );
        p.unless(
            matches!(self.log_format.as_str(), "text" | "json"),
            "log_format",
            "must be text or json",
        );
        p.unless(
            matches!(self.public_scheme.as_str(), "http" | "https"),
            "public_scheme",
            "must be http or https",
        );
        p.unless(
            matches!(self.ws_compression.as_str(), "off" | "requested" | "offered"),
            "ws_compression",
            "must be off, requested or offered",
        );
        for origin in &self.allowed_origins {
            p.unless(
                origin == "*" || crate::ws::Origin::parse(origin).is_some(),
                "allowed_origins",
                &format!("{origin:?} is not scheme://host[:port] (or *)"),
            );
        }
        p.unless(
            self.metrics_token.as_ref().is_none_or(|t| t.len() >= 16),
            "metrics_token",
            "must be at least 16 characters",
        );
        p.0
    }

    pub fn drain_timeout(&self) -> Duration {
        Duration::from_millis(self.drain_timeout_ms)
    }

    pub fn drain_unready(&self) -> Duration {
        Duration::from_millis(self.drain_unready_ms)
    }

    pub fn drain_spread(&self) -> Duration {
        Duration::from_millis(self.drain_spread_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_then_overrides() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("natter.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:9000\"\n[limits]\nmax_group_members = 50\nmax_page = 10\ndefault_page = 5\n",
        )
        .unwrap();
        let mut args = ServeArgs { config: Some(path), ..Default::default() };
        args.limits.max_page = Some(20);
        let cfg = Config::load(&args).unwrap();
        assert_eq!(cfg.listen.port(), 9000);
        assert_eq!(cfg.limits.max_group_members, 50);
        assert_eq!(cfg.limits.max_page, 20);
        assert_eq!(cfg.limits.page(Some(1000)), 20);
        assert_eq!(cfg.limits.page(None), 5);
    }

    #[test]
    fn unknown_keys_and_bad_values_fail() {
        assert!(toml::from_str::<Config>("lissten = \"x\"").is_err());
        let mut cfg = Config::default();
        cfg.limits.max_body_bytes = cfg.limits.max_frame_bytes;
        assert!(cfg.validate().is_err());
        // A reply budget must fit the write buffer, and the queue must hold a few replies.
        for tweak in [
            |l: &mut Limits| l.max_reply_bytes = 1024,
            |l: &mut Limits| l.max_reply_bytes = 8 << 20,
            |l: &mut Limits| l.max_sync_conversations = 0,
            |l: &mut Limits| l.outbound_queue_bytes = l.max_reply_bytes,
        ] {
            let mut cfg = Config::default();
            assert!(cfg.validate().is_ok());
            tweak(&mut cfg.limits);
            assert!(cfg.validate().is_err(), "{:?}", cfg.limits);
        }
    }
}

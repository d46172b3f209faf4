//! The PostgreSQL backend: the same [`Store`] as SQLite, for several nodes sharing one
//! database.
//!
//! One committer task per store drains the queued writing jobs (up to `MAX_BATCH`, in
//! submission order) and runs each inside its own savepoint of one transaction, commits once,
//! then hands the batch's entries to the commit feed and answers every job. A job refused by
//! a rule (not a member, forbidden, ...) rolls back its savepoint and leaves the others alone.
//!
//! `seq` comes from the conversation's counter row: `UPDATE conversations SET last_seq =
//! last_seq + 1 ... RETURNING last_seq` inside the committing transaction. The row lock it
//! takes serializes appends to one conversation across every node until commit, so seqs are
//! contiguous whatever the isolation level; unique keys on `(conversation, seq)` and
//! `(conversation, sender, client_msg_id)` back this up.
//!
//! Failures: a lost connection, a deadlock or a serialization failure aborts the batch, which
//! is retried whole on a fresh connection with jittered backoff; when the retries run out (the
//! database is down) every job gets `Unavailable`, which clients retry. Nothing is acked
//! before its commit succeeded. Reads take a pooled connection each.

mod admin;
mod email;
mod push;
mod read;
mod search;
mod write;

use std::str::FromStr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use natter_proto::{
    Ack, Committed, ConversationId, ConversationSummary, DeviceId, Invitation, Receipt, Role,
    UserId,
    rest::{AdminUser, AuditEntry, Device, Member, ProfileUpdate, Report, ReportStatus, User},
};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_postgres::NoTls;
use tokio_postgres::error::SqlState;

use crate::{
    Added, Append, Collected, CommitFeed, CursorUpdate, DigestJob, DigestOutcome, EmailAddress,
    GroupChange, ListCursor, MediaRecord, NewGroup, NewMedia, NewPushRegistration, NewReport, Page,
    PendingAck, Principal, PushCandidate, PushJob, PushOutcome, PushRegistration, Range, Result,
    SearchPage, SearchRequest, Store, StoreError, StoreLimits, TokenHash, UserRecord,
};
use admin::{AdminOp, AdminOut};

/// Most jobs in one transaction. Bounds the latency a batch adds to its first job.
const MAX_BATCH: usize = 512;
/// Jobs waiting for the committer; senders wait (backpressure) beyond this.
const WRITE_QUEUE: usize = 8192;
/// Pooled connections: the committer's plus readers'.
/// How long a caller waits for a connection (or for one to be made) before `Unavailable`.
const POOL_TIMEOUT: Duration = Duration::from_secs(5);
/// Attempts of one batch before its jobs get `Unavailable`.
const MAX_ATTEMPTS: u32 = 5;
/// First retry delay; doubled per attempt, with jitter.
const RETRY_BASE: Duration = Duration::from_millis(20);

/// Serializes migrations between nodes starting together (an arbitrary constant).
const MIGRATION_LOCK: i64 = 0x6e61_7474_6572;
/// The migration that last remade the search index (its messages are indexed when it is
/// applied).
const SEARCH_MIGRATION: usize = 17;

const MIGRATIONS: &[&str] = &[
    include_str!("../migrations/postgres/0001_init.sql"),
    include_str!("../migrations/postgres/0002_members_seq.sql"),
    include_str!("../migrations/postgres/0003_handle_key.sql"),
    include_str!("../migrations/postgres/0004_invitations.sql"),
    include_str!("../migrations/postgres/0005_media.sql"),
    include_str!("../migrations/postgres/0006_profiles.sql"),
    include_str!("../migrations/postgres/0007_avatars.sql"),
    include_str!("../migrations/postgres/0008_device_use.sql"),
    include_str!("../migrations/postgres/0009_deleted_users.sql"),
    include_str!("../migrations/postgres/0010_export.sql"),
    include_str!("../migrations/postgres/0011_blocks.sql"),
    include_str!("../migrations/postgres/0012_group_moderation.sql"),
    include_str!("../migrations/postgres/0013_administration.sql"),
    include_str!("../migrations/postgres/0014_push.sql"),
    include_str!("../migrations/postgres/0015_email.sql"),
    include_str!("../migrations/postgres/0016_search.sql"),
    include_str!("../migrations/postgres/0017_search_in_state.sql"),
];

/// A pooled connection, with its statement cache.
pub(crate) type Conn = deadpool_postgres::ClientWrapper;

/// How a job or query failed.
#[derive(Debug)]
pub(crate) enum Fail {
    /// A rule refused the job (or a fault): its savepoint rolls back, the batch goes on.
    Store(StoreError),
    /// The connection or the transaction is lost (connection gone, deadlock, serialization
    /// failure): the whole batch is retried.
    Abort(String),
    /// A concurrent transaction (another node) committed the same key first: roll the job's
    /// savepoint back and run it again, now that the winner is visible.
    Redo,
}

impl From<StoreError> for Fail {
    fn from(err: StoreError) -> Fail {
        Fail::Store(err)
    }
}

impl From<tokio_postgres::Error> for Fail {
    fn from(err: tokio_postgres::Error) -> Fail {
        if is_retryable(&err) { Fail::Abort(err.to_string()) } else { Fail::Store(internal(err)) }
    }
}

impl Fail {
    /// The caller's view, outside a batch (reads).
    fn into_store(self) -> StoreError {
        match self {
            Fail::Store(err) => err,
            Fail::Abort(reason) => StoreError::Unavailable(reason),
            Fail::Redo => StoreError::Internal("unexpected redo outside a batch".to_owned()),
        }
    }
}

pub(crate) type PgResult<T> = std::result::Result<T, Fail>;

/// Connection loss, shutdown, overload, deadlock or serialization failure: worth retrying.
fn is_retryable(err: &tokio_postgres::Error) -> bool {
    match err.code() {
        Some(code) => {
            *code == SqlState::T_R_SERIALIZATION_FAILURE
                || *code == SqlState::T_R_DEADLOCK_DETECTED
                || *code == SqlState::TOO_MANY_CONNECTIONS
                || *code == SqlState::CANNOT_CONNECT_NOW
                || code.code().starts_with("08") // connection exception
                || code.code().starts_with("57P") // operator intervention (shutdown)
        }
        None => {
            err.is_closed()
                || std::error::Error::source(err).is_some_and(|s| s.is::<std::io::Error>())
        }
    }
}

pub(crate) fn internal(err: impl std::fmt::Display) -> StoreError {
    StoreError::Internal(err.to_string())
}

fn pool_error(err: deadpool_postgres::PoolError) -> Fail {
    Fail::Abort(format!("no database connection: {err}"))
}

/// A writing job and where its answer goes.
struct Job {
    op: Op,
    reply: Reply,
}

enum Reply {
    /// An append's ack, for its [`PendingAck`].
    Ack(oneshot::Sender<Result<Ack>>),
    Out(oneshot::Sender<Result<Out>>),
}

impl Reply {
    fn send(self, res: Result<Out>) {
        match self {
            Reply::Out(tx) => drop(tx.send(res)),
            Reply::Ack(tx) => drop(tx.send(res.and_then(|out| match out {
                Out::Ack(ack) => Ok(ack),
                other => Err(unexpected(other)),
            }))),
        }
    }
}

/// What a writing job does; run by `write::run`.
#[derive(Debug)]
pub(crate) enum Op {
    CreateUser { handle: String, hash: String },
    CreateDevice { user: UserId, name: String, token: TokenHash },
    CreateDirect { a: UserId, b: UserId },
    CreateGroup { owner: UserId, title: String, members: Vec<UserId> },
    Append(Append),
    AddMember { actor: UserId, conversation: ConversationId, user: UserId, role: Role },
    ChangeGroup { actor: UserId, conversation: ConversationId, change: GroupChange },
    SetCursors(Vec<CursorUpdate>),
    AcceptInvitation { user: UserId, conversation: ConversationId },
    CreateMedia(NewMedia),
    CollectMedia { unattached_before: i64, orphaned_before: i64 },
    DeleteDevice(TokenHash),
    DeclineInvitation { user: UserId, conversation: ConversationId },
    Admin(admin::AdminOp),
}

impl Op {
    /// Where the job sorts within a batch: by the conversation whose counter row it locks.
    fn lock_order(&self) -> i64 {
        match self {
            Op::Append(append) => append.conversation.0,
            Op::AddMember { conversation, .. }
            | Op::ChangeGroup { conversation, .. }
            | Op::AcceptInvitation { conversation, .. } => conversation.0,
            Op::Admin(op) => op.lock_order(),
            _ => 0,
        }
    }
}

/// What a writing job returns.
#[derive(Debug)]
pub(crate) enum Out {
    User(UserId),
    Device(DeviceId),
    Direct(ConversationId, bool),
    Group(NewGroup),
    Added(Added),
    Ack(Ack),
    Receipts(Vec<Receipt>),
    Collected(Collected),
    Admin(admin::AdminOut),
    Done,
}

/// The PostgreSQL store. Cheap to share behind an `Arc`.
pub struct PgStore {
    pool: Pool,
    jobs_tx: Mutex<Option<mpsc::Sender<Job>>>,
    committer: tokio::sync::Mutex<Option<JoinHandle<()>>>,
}

impl PgStore {
    /// Connects to `url` (`postgres://user:pass@host:port/db`), migrates, and starts the
    /// committer. Needs a Tokio runtime.
    pub async fn connect(url: &str, limits: StoreLimits, feed: CommitFeed) -> Result<PgStore> {
        let config = tokio_postgres::Config::from_str(url)
            .map_err(|err| StoreError::BadRequest(format!("bad PostgreSQL URL: {err}")))?;
        PgStore::open(config, limits, feed).await
    }

    /// Like [`PgStore::connect`], from a parsed configuration.
    pub async fn open(
        mut config: tokio_postgres::Config,
        limits: StoreLimits,
        feed: CommitFeed,
    ) -> Result<PgStore> {
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(POOL_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("natter");
        }
        // Message search's `to_tsvector` and `to_tsquery` use the connection's default.
        let cfg = &limits.text_search_config;
        if cfg.is_empty() || !cfg.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
            return Err(StoreError::BadRequest(format!("{cfg:?} is no text search configuration")));
        }
        let options = config.get_options().unwrap_or_default().to_owned();
        config.options(format!("{options} -c default_text_search_config=pg_catalog.{cfg}").trim());
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig { recycling_method: RecyclingMethod::Fast },
        );
        let pool = Pool::builder(manager)
            .max_size(limits.pool_size.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(POOL_TIMEOUT))
            .create_timeout(Some(POOL_TIMEOUT))
            .recycle_timeout(Some(POOL_TIMEOUT))
            .build()
            .map_err(internal)?;
        migrate(&pool).await?;
        let (jobs_tx, jobs_rx) = mpsc::channel(WRITE_QUEUE);
        let committer = tokio::spawn(run_committer(pool.clone(), jobs_rx, feed, limits));
        Ok(PgStore {
            pool,
            jobs_tx: Mutex::new(Some(jobs_tx)),
            committer: tokio::sync::Mutex::new(Some(committer)),
        })
    }

    async fn client(&self) -> Result<deadpool_postgres::Object> {
        self.pool.get().await.map_err(|err| pool_error(err).into_store())
    }

    /// Runs an administration job on the committer.
    async fn admin(&self, op: AdminOp) -> Result<AdminOut> {
        match self.write(Op::Admin(op)).await? {
            Out::Admin(out) => Ok(out),
            other => Err(unexpected(other)),
        }
    }

    /// Queues `op` for the committer and returns the receiver of its result.
    async fn submit(&self, op: Op, reply: Reply) -> Result<()> {
        let tx = self
            .jobs_tx
            .lock()
            .expect("jobs_tx lock poisoned")
            .clone()
            .ok_or_else(|| StoreError::Unavailable("store is closed".to_owned()))?;
        if tx.send(Job { op, reply }).await.is_err() {
            return Err(StoreError::Unavailable("store committer stopped".to_owned()));
        }
        Ok(())
    }

    async fn write(&self, op: Op) -> Result<Out> {
        let (tx, rx) = oneshot::channel();
        self.submit(op, Reply::Out(tx)).await?;
        match rx.await {
            Ok(res) => res,
            Err(_) => Err(StoreError::Unavailable("store committer stopped".to_owned())),
        }
    }
}

fn unexpected(out: Out) -> StoreError {
    StoreError::Internal(format!("unexpected job result {out:?}"))
}

async fn migrate(pool: &Pool) -> Result<()> {
    let mut client = pool.get().await.map_err(|err| pool_error(err).into_store())?;
    let run = async {
        client.query("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK]).await?;
        client
            .batch_execute(
                "CREATE TABLE IF NOT EXISTS natter_migrations (
                     version    INTEGER PRIMARY KEY,
                     applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
                 )",
            )
            .await?;
        let row = client
            .query_one("SELECT coalesce(max(version), 0) FROM natter_migrations", &[])
            .await?;
        let version: i32 = row.get(0);
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            let tx = client.transaction().await?;
            tx.batch_execute(sql).await?;
            tx.execute("INSERT INTO natter_migrations (version) VALUES ($1)", &[&(i as i32 + 1)])
                .await?;
            tx.commit().await?;
            tracing::info!(version = i + 1, "applied postgres migration");
        }
        // Accounts from before handle keys get theirs (see the SQLite backend's twin); two
        // old look-alikes cannot both have one: the later is left without.
        let rows = client
            .query("SELECT id, handle FROM users WHERE handle_key IS NULL ORDER BY id", &[])
            .await?;
        for row in rows {
            let (id, handle): (i64, String) = (row.get(0), row.get(1));
            let key = crate::rules::handle_key(&handle);
            let res = client
                .execute("UPDATE users SET handle_key = $1 WHERE id = $2", &[&key, &id])
                .await;
            match res {
                Ok(_) => {}
                Err(err) if err.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
                    tracing::warn!(user = id, %handle, "handle looks like an older account's; no key");
                }
                Err(err) => return Err(err),
            }
        }
        if (version as usize) < SEARCH_MIGRATION {
            // Messages from before search get their attachment names and tokens.
            let rows = client
                .query(
                    "SELECT e.conversation_id, e.seq, s.body, e.body
                     FROM entries e JOIN message_state s USING (conversation_id, seq)
                     WHERE e.kind = 'message' AND NOT s.deleted",
                    &[],
                )
                .await?;
            for row in rows {
                let body: String = row.get(2);
                let (names, none) = crate::search::names_in_json(row.get(3));
                let tokens = crate::search::index_document(&body, &names);
                client
                    .execute(
                        "UPDATE message_state SET has_attachment = $3, names = $4, tsv = to_tsvector($5)
                         WHERE conversation_id = $1 AND seq = $2",
                        &[&row.get::<_, i64>(0), &row.get::<_, i64>(1), &!none, &names, &tokens],
                    )
                    .await?;
            }
        }
        Ok::<_, tokio_postgres::Error>(())
    };
    let res = run.await;
    let _ = client.query("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK]).await;
    res.map_err(|err| Fail::from(err).into_store())
}

async fn run_committer(
    pool: Pool,
    mut jobs_rx: mpsc::Receiver<Job>,
    feed: CommitFeed,
    limits: StoreLimits,
) {
    let mut batch: Vec<Job> = Vec::with_capacity(MAX_BATCH);
    while let Some(job) = jobs_rx.recv().await {
        batch.push(job);
        while batch.len() < MAX_BATCH {
            match jobs_rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        metrics::gauge!("natter_queue_depth", "queue" => "writer").set(jobs_rx.len() as f64);
        // Every node's committer takes conversations' counter rows in increasing id order,
        // so concurrent batches on several nodes queue behind each other instead of
        // deadlocking. The sort is stable: one conversation's appends keep their order.
        batch.sort_by_key(|job| job.op.lock_order());
        commit_batch(&pool, &mut batch, &feed, &limits).await;
    }
    tracing::info!("postgres committer stopped");
}

/// How one attempt at a batch ended.
enum Attempt {
    Committed {
        entries: Vec<Committed>,
        results: Vec<Result<Out>>,
    },
    /// Nothing was committed; the batch may run again.
    Retry(String),
    /// The outcome is unknown (the commit itself failed): do not run it again.
    Failed(String),
}

async fn commit_batch(pool: &Pool, batch: &mut Vec<Job>, feed: &CommitFeed, limits: &StoreLimits) {
    let started = Instant::now();
    let n_jobs = batch.len();
    let mut attempt = 0;
    let outcome = loop {
        attempt += 1;
        match try_batch(pool, batch, limits).await {
            Attempt::Retry(reason) if attempt < MAX_ATTEMPTS => {
                tracing::warn!(attempt, error = %reason, "postgres batch aborted; retrying");
                metrics::counter!("natter_commit_retries_total").increment(1);
                tokio::time::sleep(backoff(attempt)).await;
            }
            Attempt::Retry(reason) | Attempt::Failed(reason) => break Err(reason),
            Attempt::Committed { entries, results } => break Ok((entries, results)),
        }
    };
    metrics::histogram!("natter_commit_batch_size").record(n_jobs as f64);
    metrics::histogram!("natter_commit_seconds").record(started.elapsed().as_secs_f64());
    match outcome {
        Ok((entries, results)) => {
            metrics::counter!("natter_entries_committed_total").increment(entries.len() as u64);
            // Routing gets the batch in commit order before anyone hears of the ack; if the
            // router is gone (shutdown) the entries are durable and sync will carry them.
            if !entries.is_empty() && feed.send(entries).await.is_err() {
                tracing::debug!("commit feed closed");
            }
            for (job, res) in batch.drain(..).zip(results) {
                job.reply.send(res);
            }
        }
        Err(reason) => {
            tracing::error!(error = %reason, jobs = n_jobs, "postgres batch failed");
            for job in batch.drain(..) {
                job.reply.send(Err(StoreError::Unavailable(reason.clone())));
            }
        }
    }
}

/// `RETRY_BASE * 2^(attempt-1)`, scaled by a random factor in [0.5, 1.5] (the random low
/// bits of a v7 uuid).
fn backoff(attempt: u32) -> Duration {
    let base = RETRY_BASE * 2u32.saturating_pow(attempt.saturating_sub(1));
    let jitter = f64::from(uuid::Uuid::now_v7().as_u128() as u16) / f64::from(u16::MAX);
    base.mul_f64(0.5 + jitter)
}

async fn try_batch(pool: &Pool, batch: &[Job], limits: &StoreLimits) -> Attempt {
    let client = match pool.get().await {
        Ok(client) => client,
        Err(err) => return Attempt::Retry(format!("no database connection: {err}")),
    };
    if let Err(err) = client.batch_execute("BEGIN").await {
        return abort(client, err.to_string()).await;
    }
    let mut entries = Vec::new();
    let mut results = Vec::with_capacity(batch.len());
    let mut open = false;
    for job in batch {
        match run_job(&client, &job.op, &mut entries, limits, &mut open).await {
            Ok(res) => results.push(res),
            Err(reason) => return abort(client, reason).await,
        }
    }
    match client.batch_execute("COMMIT").await {
        Ok(()) => Attempt::Committed { entries, results },
        Err(err) => {
            // The commit may or may not have happened: the jobs are answered `Unavailable`
            // and clients retry (appends are idempotent).
            let reason = format!("commit failed: {err}");
            let _ = deadpool_postgres::Object::take(client);
            Attempt::Failed(reason)
        }
    }
}

/// Rolls the batch back and asks for a retry; a connection that cannot roll back is dropped
/// from the pool.
async fn abort(client: deadpool_postgres::Object, reason: String) -> Attempt {
    if client.batch_execute("ROLLBACK").await.is_err() {
        let _ = deadpool_postgres::Object::take(client);
    }
    Attempt::Retry(reason)
}

/// Runs one job inside its savepoint. `Err` aborts the batch; a refused job is `Ok(Err(_))`.
/// A job that succeeded leaves its savepoint `open`: the next job releases it in the same
/// round trip that opens its own (and `COMMIT` releases the last one).
async fn run_job(
    c: &Conn,
    op: &Op,
    entries: &mut Vec<Committed>,
    limits: &StoreLimits,
    open: &mut bool,
) -> std::result::Result<Result<Out>, String> {
    let savepoint = |sql: &'static str| async move {
        c.batch_execute(sql).await.map_err(|err| format!("{sql}: {err}"))
    };
    if std::mem::take(open) {
        savepoint("RELEASE SAVEPOINT job; SAVEPOINT job").await?;
    } else {
        savepoint("SAVEPOINT job").await?;
    }
    let mark = entries.len();
    let mut res = write::run(c, op, entries, limits).await;
    if matches!(res, Err(Fail::Redo)) {
        entries.truncate(mark);
        savepoint("ROLLBACK TO SAVEPOINT job").await?;
        res = write::run(c, op, entries, limits).await;
    }
    match res {
        Ok(out) => {
            *open = true;
            Ok(Ok(out))
        }
        Err(Fail::Abort(reason)) => Err(reason),
        Err(fail) => {
            entries.truncate(mark);
            savepoint("ROLLBACK TO SAVEPOINT job; RELEASE SAVEPOINT job").await?;
            Ok(Err(match fail {
                Fail::Store(err) => err,
                _ => StoreError::Internal("a job collided twice with another node".to_owned()),
            }))
        }
    }
}

#[async_trait]
impl Store for PgStore {
    async fn create_user(&self, handle: &str, password_hash: &str) -> Result<UserId> {
        let op = Op::CreateUser { handle: handle.to_owned(), hash: password_hash.to_owned() };
        match self.write(op).await? {
            Out::User(id) => Ok(id),
            other => Err(unexpected(other)),
        }
    }

    async fn create_device(&self, user: UserId, name: &str, token: TokenHash) -> Result<DeviceId> {
        match self.write(Op::CreateDevice { user, name: name.to_owned(), token }).await? {
            Out::Device(id) => Ok(id),
            other => Err(unexpected(other)),
        }
    }

    async fn create_direct(&self, a: UserId, b: UserId) -> Result<(ConversationId, bool)> {
        match self.write(Op::CreateDirect { a, b }).await? {
            Out::Direct(id, created) => Ok((id, created)),
            other => Err(unexpected(other)),
        }
    }

    async fn create_group(
        &self,
        owner: UserId,
        title: &str,
        members: &[UserId],
    ) -> Result<NewGroup> {
        let op = Op::CreateGroup { owner, title: title.to_owned(), members: members.to_vec() };
        match self.write(op).await? {
            Out::Group(group) => Ok(group),
            other => Err(unexpected(other)),
        }
    }

    async fn submit_append(&self, append: Append) -> Result<PendingAck> {
        let (tx, rx) = oneshot::channel();
        self.submit(Op::Append(append), Reply::Ack(tx)).await?;
        Ok(PendingAck(rx))
    }

    async fn add_member(
        &self,
        actor: UserId,
        conversation: ConversationId,
        user: UserId,
        role: Role,
    ) -> Result<Added> {
        match self.write(Op::AddMember { actor, conversation, user, role }).await? {
            Out::Added(added) => Ok(added),
            other => Err(unexpected(other)),
        }
    }

    async fn change_group(
        &self,
        actor: UserId,
        conversation: ConversationId,
        change: GroupChange,
    ) -> Result<Ack> {
        match self.write(Op::ChangeGroup { actor, conversation, change }).await? {
            Out::Ack(ack) => Ok(ack),
            other => Err(unexpected(other)),
        }
    }

    async fn create_media(&self, media: NewMedia) -> Result<()> {
        match self.write(Op::CreateMedia(media)).await? {
            Out::Done => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    async fn user_by_handle(&self, handle: &str) -> Result<Option<UserRecord>> {
        let c = self.client().await?;
        read::user_by_handle(&c, handle).await.map_err(Fail::into_store)
    }

    async fn user_handle(&self, user: UserId) -> Result<Option<String>> {
        let c = self.client().await?;
        read::user_handle(&c, user).await.map_err(Fail::into_store)
    }

    async fn authenticate(&self, token: TokenHash) -> Result<Option<Principal>> {
        let c = self.client().await?;
        read::authenticate(&c, &token).await.map_err(Fail::into_store)
    }

    async fn conversation(
        &self,
        user: UserId,
        conversation: ConversationId,
    ) -> Result<ConversationSummary> {
        let c = self.client().await?;
        read::conversation(&c, user, conversation).await.map_err(Fail::into_store)
    }

    async fn conversations(
        &self,
        user: UserId,
        before: Option<ListCursor>,
        limit: u32,
    ) -> Result<Vec<ConversationSummary>> {
        let c = self.client().await?;
        read::conversations(&c, user, before, Some(limit)).await.map_err(Fail::into_store)
    }

    async fn memberships(&self, user: UserId) -> Result<Vec<ConversationSummary>> {
        let c = self.client().await?;
        read::conversations(&c, user, None, None).await.map_err(Fail::into_store)
    }

    async fn users(&self, ids: &[UserId]) -> Result<Vec<User>> {
        let c = self.client().await?;
        read::users(&c, ids).await.map_err(Fail::into_store)
    }

    async fn search_users(
        &self,
        user: UserId,
        prefix: &str,
        everyone: bool,
        limit: u32,
    ) -> Result<Vec<User>> {
        let c = self.client().await?;
        read::search_users(&c, user, prefix, everyone, limit).await.map_err(Fail::into_store)
    }

    async fn contacts_of(&self, user: UserId) -> Result<Vec<UserId>> {
        let c = self.client().await?;
        read::contacts_of(&c, user).await.map_err(Fail::into_store)
    }

    async fn blocks(&self, user: UserId) -> Result<Vec<UserId>> {
        let c = self.client().await?;
        read::blocks(&c, user).await.map_err(Fail::into_store)
    }

    async fn block_relations(&self, user: UserId) -> Result<Vec<UserId>> {
        let c = self.client().await?;
        read::block_relations(&c, user).await.map_err(Fail::into_store)
    }

    async fn devices(&self, user: UserId) -> Result<Vec<Device>> {
        let c = self.client().await?;
        read::devices(&c, user).await.map_err(Fail::into_store)
    }

    async fn password_hash(&self, user: UserId) -> Result<Option<String>> {
        let c = self.client().await?;
        read::password_hash(&c, user).await.map_err(Fail::into_store)
    }

    async fn share_conversation(&self, user: UserId, others: &[UserId]) -> Result<Vec<UserId>> {
        let c = self.client().await?;
        read::share_conversation(&c, user, others).await.map_err(Fail::into_store)
    }

    async fn role(&self, user: UserId, conversation: ConversationId) -> Result<Option<Role>> {
        let c = self.client().await?;
        write::role(&c, user, conversation).await.map_err(Fail::into_store)
    }

    async fn members(&self, conversation: ConversationId) -> Result<Vec<Member>> {
        let c = self.client().await?;
        read::members(&c, conversation).await.map_err(Fail::into_store)
    }

    async fn member_ids(&self, conversation: ConversationId) -> Result<Vec<UserId>> {
        let c = self.client().await?;
        read::member_ids(&c, conversation).await.map_err(Fail::into_store)
    }

    async fn entries(
        &self,
        conversation: ConversationId,
        range: Range,
        limit: u32,
    ) -> Result<Page> {
        let c = self.client().await?;
        read::entries(&c, conversation, range, limit).await.map_err(Fail::into_store)
    }

    async fn invitations(&self, user: UserId) -> Result<Vec<Invitation>> {
        let c = self.client().await?;
        read::invitations(&c, user).await.map_err(Fail::into_store)
    }

    async fn media(&self, id: &str) -> Result<Option<MediaRecord>> {
        let c = self.client().await?;
        let ids = [id.to_owned()];
        Ok(write::media_rows(&c, &ids).await.map_err(Fail::into_store)?.pop())
    }

    async fn media_usage(&self, user: UserId) -> Result<u64> {
        let c = self.client().await?;
        write::media_usage(&c, user).await.map_err(Fail::into_store)
    }

    async fn messages_by(
        &self,
        user: UserId,
        after: Option<(ConversationId, natter_proto::Seq)>,
        limit: u32,
    ) -> Result<Vec<natter_proto::Entry>> {
        let c = self.client().await?;
        read::messages_by(&c, user, after, limit).await.map_err(Fail::into_store)
    }

    async fn media_of(
        &self,
        user: UserId,
        after: Option<String>,
        limit: u32,
    ) -> Result<Vec<MediaRecord>> {
        let c = self.client().await?;
        write::media_of(&c, user, after.as_deref(), limit).await.map_err(Fail::into_store)
    }

    async fn media_access(&self, user: UserId, id: &str) -> Result<bool> {
        let c = self.client().await?;
        write::media_access(&c, user, id).await.map_err(Fail::into_store)
    }

    async fn set_cursors(&self, mut updates: Vec<CursorUpdate>) -> Result<Vec<Receipt>> {
        // Rows in one order on every node, so two nodes' writes cannot deadlock.
        updates.sort_by_key(|u| (u.conversation, u.user));
        match self.write(Op::SetCursors(updates)).await? {
            Out::Receipts(receipts) => Ok(receipts),
            other => Err(unexpected(other)),
        }
    }

    async fn accept_invitation(&self, user: UserId, conversation: ConversationId) -> Result<Ack> {
        match self.write(Op::AcceptInvitation { user, conversation }).await? {
            Out::Ack(ack) => Ok(ack),
            other => Err(unexpected(other)),
        }
    }

    async fn set_profile(&self, user: UserId, update: ProfileUpdate) -> Result<User> {
        // One user's own row, outside the log: no need for the writer's batches.
        let c = self.client().await?;
        write::set_profile(&c, user, &update).await.map_err(Fail::into_store)
    }

    async fn touch_device(&self, device: DeviceId, at: i64) -> Result<()> {
        let c = self.client().await?;
        write::touch_device(&c, device, at).await.map_err(Fail::into_store)
    }

    async fn set_password(
        &self,
        user: UserId,
        hash: &str,
        keep: DeviceId,
    ) -> Result<Vec<DeviceId>> {
        let c = self.client().await?;
        write::set_password(&c, user, hash, keep).await.map_err(Fail::into_store)
    }

    async fn delete_user(&self, user: UserId) -> Result<Vec<DeviceId>> {
        let c = self.client().await?;
        write::delete_user(&c, user).await.map_err(Fail::into_store)
    }

    async fn free_deleted_handles(&self, deleted_before: i64) -> Result<u64> {
        let c = self.client().await?;
        write::free_deleted_handles(&c, deleted_before).await.map_err(Fail::into_store)
    }

    async fn unban(&self, actor: UserId, conversation: ConversationId, user: UserId) -> Result<()> {
        let c = self.client().await?;
        write::unban(&c, actor, conversation, user).await.map_err(Fail::into_store)
    }

    async fn bans(&self, conversation: ConversationId) -> Result<Vec<natter_proto::rest::Ban>> {
        let c = self.client().await?;
        read::bans(&c, conversation).await.map_err(Fail::into_store)
    }

    async fn block(&self, blocker: UserId, blocked: UserId, max: u32) -> Result<()> {
        let c = self.client().await?;
        write::block(&c, blocker, blocked, max).await.map_err(Fail::into_store)
    }

    async fn unblock(&self, blocker: UserId, blocked: UserId) -> Result<()> {
        let c = self.client().await?;
        write::unblock(&c, blocker, blocked).await.map_err(Fail::into_store)
    }

    async fn revoke_device(&self, user: UserId, device: DeviceId) -> Result<()> {
        let c = self.client().await?;
        write::revoke_device(&c, user, device).await.map_err(Fail::into_store)
    }

    async fn delete_device(&self, token: TokenHash) -> Result<()> {
        match self.write(Op::DeleteDevice(token)).await? {
            Out::Done => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    async fn decline_invitation(&self, user: UserId, conversation: ConversationId) -> Result<()> {
        match self.write(Op::DeclineInvitation { user, conversation }).await? {
            Out::Done => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    async fn collect_media(
        &self,
        unattached_before: i64,
        orphaned_before: i64,
    ) -> Result<Collected> {
        match self.write(Op::CollectMedia { unattached_before, orphaned_before }).await? {
            Out::Collected(collected) => Ok(collected),
            other => Err(unexpected(other)),
        }
    }

    async fn add_push_registration(
        &self,
        user: UserId,
        device: DeviceId,
        registration: NewPushRegistration,
    ) -> Result<i64> {
        let c = self.client().await?;
        push::add_registration(&c, user, device, &registration).await.map_err(Fail::into_store)
    }

    async fn push_registrations(&self, user: UserId) -> Result<Vec<PushRegistration>> {
        let c = self.client().await?;
        push::registrations(&c, user).await.map_err(Fail::into_store)
    }

    async fn delete_push_registration(&self, user: UserId, id: i64) -> Result<()> {
        let c = self.client().await?;
        push::delete_registration(&c, user, id).await.map_err(Fail::into_store)
    }

    async fn drop_push_token(&self, provider: &str, token: &str) -> Result<()> {
        let c = self.client().await?;
        push::drop_token(&c, provider, token).await.map_err(Fail::into_store)
    }

    async fn mute_notifications(
        &self,
        user: UserId,
        conversation: Option<ConversationId>,
        until: Option<i64>,
    ) -> Result<()> {
        let c = self.client().await?;
        push::mute(&c, user, conversation, until).await.map_err(Fail::into_store)
    }

    async fn queue_pushes(&self, candidates: Vec<PushCandidate>, now: i64) -> Result<u64> {
        let c = self.client().await?;
        push::queue(&c, &candidates, now).await.map_err(Fail::into_store)
    }

    async fn claim_pushes(&self, now: i64, lease_ms: i64, limit: u32) -> Result<Vec<PushJob>> {
        let c = self.client().await?;
        push::claim(&c, now, lease_ms, limit).await.map_err(Fail::into_store)
    }

    async fn finish_push(&self, id: i64, outcome: PushOutcome) -> Result<()> {
        let c = self.client().await?;
        push::finish(&c, id, outcome).await.map_err(Fail::into_store)
    }

    async fn search(&self, user: UserId, request: SearchRequest) -> Result<SearchPage> {
        let c = self.client().await?;
        search::search(&c, user, &request).await.map_err(Fail::into_store)
    }

    async fn set_email(&self, user: UserId, email: Option<String>) -> Result<()> {
        let c = self.client().await?;
        email::set_email(&c, user, email.as_deref()).await.map_err(Fail::into_store)
    }

    async fn email(&self, user: UserId) -> Result<Option<EmailAddress>> {
        let c = self.client().await?;
        email::email(&c, user).await.map_err(Fail::into_store)
    }

    async fn verify_email(&self, user: UserId, address: &str, now: i64) -> Result<bool> {
        let c = self.client().await?;
        email::verify_email(&c, user, address, now).await.map_err(Fail::into_store)
    }

    async fn set_digests(&self, user: UserId, address: &str, on: bool) -> Result<bool> {
        let c = self.client().await?;
        email::set_digests(&c, user, address, on).await.map_err(Fail::into_store)
    }

    async fn queue_digests(&self, users: Vec<UserId>, due_at: i64, period_ms: i64) -> Result<u64> {
        let c = self.client().await?;
        email::queue(&c, &users, due_at, period_ms).await.map_err(Fail::into_store)
    }

    async fn claim_digests(&self, now: i64, lease_ms: i64, limit: u32) -> Result<Vec<DigestJob>> {
        let c = self.client().await?;
        email::claim(&c, now, lease_ms, limit).await.map_err(Fail::into_store)
    }

    async fn finish_digest(&self, user: UserId, outcome: DigestOutcome) -> Result<()> {
        let c = self.client().await?;
        email::finish(&c, user, outcome).await.map_err(Fail::into_store)
    }

    async fn create_report(&self, report: NewReport) -> Result<i64> {
        match self.admin(AdminOp::CreateReport(report)).await? {
            AdminOut::Id(id) => Ok(id),
            other => Err(unexpected(Out::Admin(other))),
        }
    }

    async fn reports(
        &self,
        status: Option<ReportStatus>,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<Report>> {
        let c = self.client().await?;
        admin::reports(&c, status, before, limit).await.map_err(Fail::into_store)
    }

    async fn resolve_report(
        &self,
        admin: UserId,
        id: i64,
        status: ReportStatus,
        note: Option<String>,
    ) -> Result<()> {
        self.admin(AdminOp::ResolveReport { admin, id, status, note }).await.map(drop)
    }

    async fn is_admin(&self, user: UserId) -> Result<bool> {
        let c = self.client().await?;
        admin::is_admin(&c, user).await.map_err(Fail::into_store)
    }

    async fn set_admin(&self, user: UserId, admin: bool, actor: Option<UserId>) -> Result<()> {
        self.admin(AdminOp::SetAdmin { user, admin, actor }).await.map(drop)
    }

    async fn admin_users(
        &self,
        prefix: Option<String>,
        after: Option<UserId>,
        limit: u32,
    ) -> Result<Vec<AdminUser>> {
        let c = self.client().await?;
        admin::admin_users(&c, prefix.as_deref(), after, limit).await.map_err(Fail::into_store)
    }

    async fn suspend(
        &self,
        admin: UserId,
        user: UserId,
        until: i64,
        reason: String,
    ) -> Result<Vec<DeviceId>> {
        match self.admin(AdminOp::Suspend { admin, user, until, reason }).await? {
            AdminOut::Devices(devices) => Ok(devices),
            other => Err(unexpected(Out::Admin(other))),
        }
    }

    async fn restore(&self, admin: UserId, user: UserId) -> Result<()> {
        self.admin(AdminOp::Restore { admin, user }).await.map(drop)
    }

    async fn remove_message(
        &self,
        admin: UserId,
        conversation: ConversationId,
        seq: natter_proto::Seq,
    ) -> Result<Ack> {
        match self.admin(AdminOp::RemoveMessage { admin, conversation, seq }).await? {
            AdminOut::Ack(ack) => Ok(ack),
            other => Err(unexpected(Out::Admin(other))),
        }
    }

    async fn remove_messages_by(&self, admin: UserId, user: UserId, limit: u32) -> Result<u64> {
        match self.admin(AdminOp::RemoveMessagesBy { admin, user, limit }).await? {
            AdminOut::Count(n) => Ok(n),
            other => Err(unexpected(Out::Admin(other))),
        }
    }

    async fn audit_log(&self, before: Option<i64>, limit: u32) -> Result<Vec<AuditEntry>> {
        let c = self.client().await?;
        admin::audit_log(&c, before, limit).await.map_err(Fail::into_store)
    }

    async fn close(&self) {
        // Dropping the last sender ends the committer loop after it commits what is queued.
        drop(self.jobs_tx.lock().expect("jobs_tx lock poisoned").take());
        let handle = self.committer.lock().await.take();
        if let Some(handle) = handle {
            let _ = handle.await;
        }
    }
}

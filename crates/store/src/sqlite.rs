//! The embedded SQLite backend.
//!
//! One writer thread owns the only writing connection. Jobs reach it through a bounded
//! channel in submission order; it drains what is queued (up to `MAX_BATCH`), runs each job
//! inside its own savepoint of one `BEGIN IMMEDIATE` transaction, commits once (one WAL
//! flush with `synchronous=FULL`), then hands the batch's entries to the commit feed and
//! answers every job. A job that fails rolls back its savepoint and leaves the others alone.
//!
//! Reads run on a small pool of read-only connections under `spawn_blocking`; WAL lets them
//! proceed while the writer commits.

mod admin;
pub mod backup;
mod email;
mod push;
mod read;
mod search;
mod write;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Instant;

use async_trait::async_trait;
use natter_proto::{
    Ack, Committed, ConversationId, ConversationSummary, DeviceId, Invitation, Receipt, Role,
    UserId,
    rest::{AdminUser, AuditEntry, Device, Member, ProfileUpdate, Report, ReportStatus, User},
};
use rusqlite::{Connection, OpenFlags};
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::{
    Added, Append, Collected, CommitFeed, CursorUpdate, DigestJob, DigestOutcome, EmailAddress,
    GroupChange, ListCursor, MediaRecord, NewGroup, NewMedia, NewPushRegistration, NewReport, Page,
    PendingAck, Principal, PushCandidate, PushJob, PushOutcome, PushRegistration, Range, Result,
    SearchPage, SearchRequest, Store, StoreError, StoreLimits, TokenHash, UserRecord,
};

/// Most jobs in one transaction. Bounds the latency a batch adds to its first job.
const MAX_BATCH: usize = 512;
/// Jobs waiting for the writer; senders wait (backpressure) beyond this.
const WRITE_QUEUE: usize = 8192;
const N_READERS: usize = 4;

const MIGRATIONS: &[&str] = &[
    include_str!("../migrations/sqlite/0001_init.sql"),
    include_str!("../migrations/sqlite/0002_members_seq.sql"),
    include_str!("../migrations/sqlite/0003_handle_key.sql"),
    include_str!("../migrations/sqlite/0004_invitations.sql"),
    include_str!("../migrations/sqlite/0005_media.sql"),
    include_str!("../migrations/sqlite/0006_profiles.sql"),
    include_str!("../migrations/sqlite/0007_avatars.sql"),
    include_str!("../migrations/sqlite/0008_device_use.sql"),
    include_str!("../migrations/sqlite/0009_deleted_users.sql"),
    include_str!("../migrations/sqlite/0010_export.sql"),
    include_str!("../migrations/sqlite/0011_blocks.sql"),
    include_str!("../migrations/sqlite/0012_group_moderation.sql"),
    include_str!("../migrations/sqlite/0013_administration.sql"),
    include_str!("../migrations/sqlite/0014_push.sql"),
    include_str!("../migrations/sqlite/0015_email.sql"),
    include_str!("../migrations/sqlite/0016_search.sql"),
    include_str!("../migrations/sqlite/0017_search_in_state.sql"),
];

/// A unit of work for the writer: runs inside a savepoint, pushes the entries it commits, and
/// returns whether it succeeded plus what to do once the batch's fate is known.
type Job = Box<dyn FnOnce(&Connection, &mut Vec<Committed>) -> (bool, Completion) + Send>;
/// Called with `true` once the batch committed, `false` if the commit failed.
type Completion = Box<dyn FnOnce(bool) + Send>;

/// The SQLite store. Cheap to share behind an `Arc`.
pub struct SqliteStore {
    jobs_tx: Mutex<Option<mpsc::Sender<Job>>>,
    writer: Mutex<Option<thread::JoinHandle<()>>>,
    readers: Arc<ReaderPool>,
    limits: StoreLimits,
}

struct ReaderPool {
    // A std mutex: held only to pop or push a connection, never across an await.
    conns: Mutex<Vec<Connection>>,
    /// One permit per connection in `conns`.
    permits: Arc<Semaphore>,
}

impl SqliteStore {
    /// Opens (creating and migrating) the database file at `path`.
    pub fn open(path: &Path, limits: StoreLimits, feed: CommitFeed) -> Result<SqliteStore> {
        let writer = Connection::open(path).map_err(internal)?;
        configure(&writer, true)?;
        writer
            .pragma_update(None, "journal_size_limit", limits.wal_limit_bytes as i64)
            .map_err(internal)?;
        migrate(&writer)?;
        let checkpointer = Checkpointer {
            conn: Connection::open(path).map_err(internal)?,
            wal: Wal::of(path, limits.wal_limit_bytes),
        };
        let mut readers = Vec::with_capacity(N_READERS);
        for _ in 0..N_READERS {
            let conn = Connection::open_with_flags(
                path,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
            .map_err(internal)?;
            configure(&conn, false)?;
            readers.push(conn);
        }
        Ok(Self::start(writer, checkpointer, readers, limits, feed))
    }

    /// A private database in a temporary file that is removed when the store is dropped
    /// (tests). SQLite's `:memory:` cannot share one database between the writer and readers.
    pub fn temporary(limits: StoreLimits, feed: CommitFeed) -> Result<(SqliteStore, TempPath)> {
        let dir = std::env::temp_dir().join(format!("natter-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).map_err(internal)?;
        let store = SqliteStore::open(&dir.join("natter.db"), limits, feed)?;
        Ok((store, TempPath(dir)))
    }

    fn start(
        writer: Connection,
        checkpointer: Checkpointer,
        readers: Vec<Connection>,
        limits: StoreLimits,
        feed: CommitFeed,
    ) -> SqliteStore {
        let (jobs_tx, jobs_rx) = mpsc::channel::<Job>(WRITE_QUEUE);
        let handle = thread::Builder::new()
            .name("natter-sqlite-writer".to_owned())
            .spawn(move || {
                // The checkpointer lives exactly as long as the writer: its last act after
                // the writer's last commit is to truncate the WAL.
                let (stop_tx, stop_rx) = std::sync::mpsc::channel();
                let wal = checkpointer.wal.clone();
                let checkpoints = thread::Builder::new()
                    .name("natter-sqlite-checkpoint".to_owned())
                    .spawn(move || checkpointer.run(stop_rx))
                    .expect("spawning the checkpoint thread");
                run_writer(writer, jobs_rx, feed, &wal);
                drop(stop_tx);
                let _ = checkpoints.join();
            })
            .expect("spawning the writer thread");
        let n = readers.len();
        SqliteStore {
            jobs_tx: Mutex::new(Some(jobs_tx)),
            writer: Mutex::new(Some(handle)),
            readers: Arc::new(ReaderPool {
                conns: Mutex::new(readers),
                permits: Arc::new(Semaphore::new(n)),
            }),
            limits,
        }
    }

    fn sender(&self) -> Result<mpsc::Sender<Job>> {
        self.jobs_tx
            .lock()
            .expect("jobs_tx lock poisoned")
            .clone()
            .ok_or_else(|| StoreError::Unavailable("store is closed".to_owned()))
    }

    /// Queues `f` for the writer and returns the receiver of its result.
    async fn submit<T, F>(&self, f: F) -> Result<oneshot::Receiver<Result<T>>>
    where
        T: Send + 'static,
        F: FnOnce(&Connection, &mut Vec<Committed>) -> Result<T> + Send + 'static,
    {
        let (res_tx, res_rx) = oneshot::channel();
        let job: Job = Box::new(move |conn, entries| match f(conn, entries) {
            Ok(value) => (
                true,
                Box::new(move |committed| {
                    let _ = res_tx.send(if committed {
                        Ok(value)
                    } else {
                        Err(StoreError::Unavailable("commit failed".to_owned()))
                    });
                }),
            ),
            Err(err) => (false, Box::new(move |_| drop(res_tx.send(Err(err))))),
        });
        let tx = self.sender()?;
        if tx.send(job).await.is_err() {
            return Err(StoreError::Unavailable("store writer stopped".to_owned()));
        }
        Ok(res_rx)
    }

    async fn write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection, &mut Vec<Committed>) -> Result<T> + Send + 'static,
    {
        match self.submit(f).await?.await {
            Ok(res) => res,
            Err(_) => Err(StoreError::Unavailable("store writer stopped".to_owned())),
        }
    }

    async fn read<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let pool = self.readers.clone();
        // The permit and the connection both live in the blocking closure: if the caller's
        // future is dropped (a client went away mid-read), the read still finishes and hands
        // the connection back before its permit is released.
        let permit = pool.permits.clone().acquire_owned().await.map_err(|_| closed())?;
        tokio::task::spawn_blocking(move || {
            let conn = pool.conns.lock().expect("reader pool lock poisoned").pop();
            let Some(conn) = conn else {
                return Err(StoreError::Internal("reader pool empty".to_owned()));
            };
            let res = f(&conn);
            pool.conns.lock().expect("reader pool lock poisoned").push(conn);
            drop(permit);
            res
        })
        .await
        .map_err(|err| StoreError::Internal(format!("reader task failed: {err}")))?
    }
}

/// A temporary database directory, removed on drop.
pub struct TempPath(std::path::PathBuf);

impl TempPath {
    /// The directory holding the database file (`natter.db`) and its WAL.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn closed() -> StoreError {
    StoreError::Unavailable("store is closed".to_owned())
}

pub(crate) fn internal(err: impl std::fmt::Display) -> StoreError {
    StoreError::Internal(err.to_string())
}

/// How long a connection waits for a lock another holds.
const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

fn configure(conn: &Connection, writer: bool) -> Result<()> {
    conn.busy_timeout(BUSY_TIMEOUT).map_err(internal)?;
    // Room for every statement the store uses: the default 16 made them evict each other and
    // be re-prepared on the read path.
    conn.set_prepared_statement_cache_capacity(64);
    // Savepoint and sort journals in memory, not temp files.
    conn.pragma_update(None, "temp_store", "MEMORY").map_err(internal)?;
    if writer {
        // WAL: readers never block the writer. FULL: the WAL is fsynced at every commit, so
        // an acked entry survives a power cut, not only a process crash.
        conn.pragma_update(None, "journal_mode", "WAL").map_err(internal)?;
        conn.pragma_update(None, "synchronous", "FULL").map_err(internal)?;
        conn.pragma_update(None, "foreign_keys", "ON").map_err(internal)?;
        // A batch of hundreds of appends must not spill dirty pages mid-transaction.
        conn.pragma_update(None, "cache_size", -32 * 1024).map_err(internal)?;
        // Checkpoints run on their own thread (`Checkpointer`), not after the writer's
        // commits.
        conn.pragma_update(None, "wal_autocheckpoint", 0).map_err(internal)?;
    } else {
        conn.pragma_update(None, "cache_size", -8 * 1024).map_err(internal)?;
    }
    Ok(())
}

/// How often the WAL is checkpointed into the database file.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(500);
/// Longest a restarting checkpoint waits for readers of older snapshots (holding off the
/// writer's next batch meanwhile) before it gives up until the WAL is checked again.
const RESTART_WAIT: std::time::Duration = std::time::Duration::from_millis(200);
/// How long after a restart that a reader held off the next one is tried.
const RESTART_BACKOFF: std::time::Duration = std::time::Duration::from_secs(1);

/// The WAL file and the size past which it is restarted.
///
/// Passive checkpoints (`Checkpointer`) copy the WAL back into the database file without
/// ever blocking the writer, but under steady writes they never catch up with it, and SQLite
/// restarts a WAL from its beginning only when a write transaction begins with all of it
/// copied: the WAL would grow without end (34 GB beside a 372 MB database after 1,000,000
/// messages). So once it is past `limit` the writer itself, between two batches, runs a
/// restarting checkpoint (what the passive ones left, and a wait of at most `RESTART_WAIT`
/// for readers), and its next batch starts the WAL over, truncated to `limit`
/// (`journal_size_limit`).
#[derive(Clone)]
struct Wal {
    path: std::path::PathBuf,
    limit: u64,
    /// After a restart a reader held off (a long read: a backup), none is tried before this:
    /// each would hold the writer's next batch for `RESTART_WAIT` again.
    held_off_until: std::cell::Cell<Option<Instant>>,
    /// Held by whoever checkpoints: two checkpoints at once make one fail at once (SQLite
    /// lets one run), and a restart that failed only for meeting the passive checkpointer
    /// must not be held off like one a reader refused (on a loaded machine the two met
    /// often enough that the WAL grew unbounded for the hold-offs).
    checkpointing: std::sync::Arc<std::sync::Mutex<()>>,
}

impl Wal {
    fn of(db: &Path, limit: u64) -> Wal {
        let mut path = db.as_os_str().to_owned();
        path.push("-wal");
        Wal {
            path: path.into(),
            limit,
            held_off_until: std::cell::Cell::new(None),
            checkpointing: Default::default(),
        }
    }

    fn size(&self) -> u64 {
        std::fs::metadata(&self.path).map_or(0, |m| m.len())
    }

    /// On the writer's connection, after each batch (a `stat`): restarts the WAL if it is
    /// past `limit`.
    fn restart_if_large(&self, writer: &Connection) {
        if self.size() <= self.limit
            || self.held_off_until.get().is_some_and(|until| Instant::now() < until)
        {
            return;
        }
        let restart = || -> rusqlite::Result<bool> {
            // A passive checkpoint in progress finishes first: it copies at most what the WAL
            // holds, about `limit`.
            let _checkpointing = self.checkpointing.lock().unwrap_or_else(|e| e.into_inner());
            writer.busy_timeout(RESTART_WAIT)?;
            let done = writer
                .query_row("PRAGMA wal_checkpoint(RESTART)", [], |r| Ok(r.get::<_, i64>(0)? == 0));
            writer.busy_timeout(BUSY_TIMEOUT)?;
            done
        };
        let done = match restart() {
            Ok(done) => {
                metrics::counter!("natter_sqlite_wal_restarts_total", "done" => done.to_string())
                    .increment(1);
                done
            }
            Err(err) => {
                tracing::warn!(error = %err, "restarting the wal failed");
                false
            }
        };
        self.held_off_until.set((!done).then(|| Instant::now() + RESTART_BACKOFF));
    }
}

/// Copies the WAL back into the database file beside the writer, passively (`Wal`).
struct Checkpointer {
    conn: Connection,
    wal: Wal,
}

impl Checkpointer {
    /// Checkpoints until `stop_rx` disconnects; then truncates the WAL.
    fn run(self, stop_rx: std::sync::mpsc::Receiver<()>) {
        use std::sync::mpsc::RecvTimeoutError;
        let checkpoint = |mode: &str| {
            let _checkpointing = self.wal.checkpointing.lock().unwrap_or_else(|e| e.into_inner());
            let sql = format!("PRAGMA wal_checkpoint({mode})");
            if let Err(err) = self.conn.query_row(&sql, [], |_| Ok(())) {
                tracing::warn!(error = %err, mode, "wal checkpoint failed");
            }
        };
        if let Err(err) = self.conn.busy_timeout(BUSY_TIMEOUT) {
            tracing::warn!(error = %err, "setting the checkpoint's busy timeout");
        }
        while let Err(RecvTimeoutError::Timeout) = stop_rx.recv_timeout(CHECKPOINT_EVERY) {
            metrics::gauge!("natter_sqlite_wal_bytes").set(self.wal.size() as f64);
            checkpoint("PASSIVE");
        }
        checkpoint("TRUNCATE");
    }
}

/// The migration that last remade the search index (its messages are indexed when it is
/// applied).
const SEARCH_MIGRATION: usize = 17;

fn migrate(conn: &Connection) -> Result<()> {
    let version: i64 =
        conn.pragma_query_value(None, "user_version", |row| row.get(0)).map_err(internal)?;
    let backfill_search = (version as usize) < SEARCH_MIGRATION;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let tx = conn.unchecked_transaction().map_err(internal)?;
        tx.execute_batch(sql).map_err(internal)?;
        tx.pragma_update(None, "user_version", i as i64 + 1).map_err(internal)?;
        tx.commit().map_err(internal)?;
        tracing::info!(version = i + 1, "applied sqlite migration");
    }
    if backfill_search {
        write::backfill_search(conn)?;
    }
    write::backfill_handle_keys(conn)
}

fn run_writer(conn: Connection, mut jobs_rx: mpsc::Receiver<Job>, feed: CommitFeed, wal: &Wal) {
    let mut batch: Vec<Job> = Vec::with_capacity(MAX_BATCH);
    while let Some(job) = jobs_rx.blocking_recv() {
        batch.push(job);
        while batch.len() < MAX_BATCH {
            match jobs_rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        metrics::gauge!("natter_queue_depth", "queue" => "writer").set(jobs_rx.len() as f64);
        let started = Instant::now();
        let n_jobs = batch.len();
        let mut entries = Vec::new();
        let mut completions = Vec::with_capacity(n_jobs);
        let committed = match conn.execute_batch("BEGIN IMMEDIATE") {
            Ok(()) => {
                for job in batch.drain(..) {
                    completions.push(run_job(&conn, job, &mut entries));
                }
                match conn.execute_batch("COMMIT") {
                    Ok(()) => true,
                    Err(err) => {
                        tracing::error!(error = %err, "sqlite commit failed");
                        let _ = conn.execute_batch("ROLLBACK");
                        false
                    }
                }
            }
            Err(err) => {
                tracing::error!(error = %err, "sqlite begin failed");
                // Dropping a job that never ran drops its reply sender: it reads as unavailable.
                batch.clear();
                false
            }
        };
        metrics::histogram!("natter_commit_batch_size").record(n_jobs as f64);
        metrics::histogram!("natter_commit_seconds").record(started.elapsed().as_secs_f64());
        if committed {
            metrics::counter!("natter_entries_committed_total").increment(entries.len() as u64);
            // Routing gets the batch in commit order before anyone hears of the ack; if the
            // router is gone (shutdown) the entries are durable and sync will carry them.
            if !entries.is_empty() && feed.blocking_send(entries).is_err() {
                tracing::debug!("commit feed closed");
            }
        }
        for done in completions {
            done(committed);
        }
        wal.restart_if_large(&conn);
    }
    tracing::info!("sqlite writer stopped");
}

/// Runs a cached statement that returns no rows (savepoint control).
fn exec_cached(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(|_| ())
}

fn run_job(conn: &Connection, job: Job, entries: &mut Vec<Committed>) -> Completion {
    if let Err(err) = exec_cached(conn, "SAVEPOINT job") {
        tracing::error!(error = %err, "sqlite savepoint failed");
        drop(job);
        return Box::new(|_| {});
    }
    let mark = entries.len();
    let (ok, done) = job(conn, entries);
    if !ok {
        entries.truncate(mark);
        if let Err(err) = exec_cached(conn, "ROLLBACK TO job") {
            tracing::error!(error = %err, "sqlite savepoint rollback failed");
        }
    }
    if let Err(err) = exec_cached(conn, "RELEASE job") {
        tracing::error!(error = %err, "sqlite savepoint release failed");
    }
    done
}

#[async_trait]
impl Store for SqliteStore {
    async fn create_user(&self, handle: &str, password_hash: &str) -> Result<UserId> {
        let (handle, hash) = (handle.to_owned(), password_hash.to_owned());
        self.write(move |c, _| write::create_user(c, &handle, &hash)).await
    }

    async fn create_device(&self, user: UserId, name: &str, token: TokenHash) -> Result<DeviceId> {
        let name = name.to_owned();
        self.write(move |c, _| write::create_device(c, user, &name, &token)).await
    }

    async fn create_direct(&self, a: UserId, b: UserId) -> Result<(ConversationId, bool)> {
        self.write(move |c, out| write::create_direct(c, out, a, b)).await
    }

    async fn create_group(
        &self,
        owner: UserId,
        title: &str,
        members: &[UserId],
    ) -> Result<NewGroup> {
        let (title, members) = (title.to_owned(), members.to_vec());
        let limits = self.limits.clone();
        self.write(move |c, out| write::create_group(c, out, &limits, owner, &title, &members))
            .await
    }

    async fn submit_append(&self, append: Append) -> Result<PendingAck> {
        let rx = self.submit(move |c, out| write::append(c, out, &append)).await?;
        Ok(PendingAck(rx))
    }

    async fn add_member(
        &self,
        actor: UserId,
        conversation: ConversationId,
        user: UserId,
        role: Role,
    ) -> Result<Added> {
        let limits = self.limits.clone();
        self.write(move |c, out| {
            write::add_member(c, out, &limits, actor, conversation, user, role)
        })
        .await
    }

    async fn change_group(
        &self,
        actor: UserId,
        conversation: ConversationId,
        change: GroupChange,
    ) -> Result<Ack> {
        self.write(move |c, out| write::change_group(c, out, actor, conversation, &change)).await
    }

    async fn unban(&self, actor: UserId, conversation: ConversationId, user: UserId) -> Result<()> {
        self.write(move |c, _| write::unban(c, actor, conversation, user)).await
    }

    async fn create_media(&self, media: NewMedia) -> Result<()> {
        self.write(move |c, _| write::create_media(c, &media)).await
    }

    async fn user_by_handle(&self, handle: &str) -> Result<Option<UserRecord>> {
        let handle = handle.to_owned();
        self.read(move |c| read::user_by_handle(c, &handle)).await
    }

    async fn user_handle(&self, user: UserId) -> Result<Option<String>> {
        self.read(move |c| read::user_handle(c, user)).await
    }

    async fn authenticate(&self, token: TokenHash) -> Result<Option<Principal>> {
        self.read(move |c| read::authenticate(c, &token)).await
    }

    async fn conversation(
        &self,
        user: UserId,
        conversation: ConversationId,
    ) -> Result<ConversationSummary> {
        self.read(move |c| read::conversation(c, user, conversation)).await
    }

    async fn conversations(
        &self,
        user: UserId,
        before: Option<ListCursor>,
        limit: u32,
    ) -> Result<Vec<ConversationSummary>> {
        self.read(move |c| read::conversations(c, user, before, Some(limit))).await
    }

    async fn memberships(&self, user: UserId) -> Result<Vec<ConversationSummary>> {
        self.read(move |c| read::conversations(c, user, None, None)).await
    }

    async fn users(&self, ids: &[UserId]) -> Result<Vec<User>> {
        let ids = ids.to_vec();
        self.read(move |c| read::users(c, &ids)).await
    }

    async fn search_users(
        &self,
        user: UserId,
        prefix: &str,
        everyone: bool,
        limit: u32,
    ) -> Result<Vec<User>> {
        let prefix = prefix.to_owned();
        self.read(move |c| read::search_users(c, user, &prefix, everyone, limit)).await
    }

    async fn contacts_of(&self, user: UserId) -> Result<Vec<UserId>> {
        self.read(move |c| read::contacts_of(c, user)).await
    }

    async fn blocks(&self, user: UserId) -> Result<Vec<UserId>> {
        self.read(move |c| read::blocks(c, user)).await
    }

    async fn block_relations(&self, user: UserId) -> Result<Vec<UserId>> {
        self.read(move |c| read::block_relations(c, user)).await
    }

    async fn devices(&self, user: UserId) -> Result<Vec<Device>> {
        self.read(move |c| read::devices(c, user)).await
    }

    async fn password_hash(&self, user: UserId) -> Result<Option<String>> {
        self.read(move |c| read::password_hash(c, user)).await
    }

    async fn share_conversation(&self, user: UserId, others: &[UserId]) -> Result<Vec<UserId>> {
        let others = others.to_vec();
        self.read(move |c| read::share_conversation(c, user, &others)).await
    }

    async fn role(&self, user: UserId, conversation: ConversationId) -> Result<Option<Role>> {
        self.read(move |c| write::role(c, user, conversation)).await
    }

    async fn members(&self, conversation: ConversationId) -> Result<Vec<Member>> {
        self.read(move |c| read::members(c, conversation)).await
    }

    async fn bans(&self, conversation: ConversationId) -> Result<Vec<natter_proto::rest::Ban>> {
        self.read(move |c| read::bans(c, conversation)).await
    }

    async fn member_ids(&self, conversation: ConversationId) -> Result<Vec<UserId>> {
        self.read(move |c| read::member_ids(c, conversation)).await
    }

    async fn entries(
        &self,
        conversation: ConversationId,
        range: Range,
        limit: u32,
    ) -> Result<Page> {
        self.read(move |c| read::entries(c, conversation, range, limit)).await
    }

    async fn invitations(&self, user: UserId) -> Result<Vec<Invitation>> {
        self.read(move |c| read::invitations(c, user)).await
    }

    async fn media(&self, id: &str) -> Result<Option<MediaRecord>> {
        let ids = vec![id.to_owned()];
        self.read(move |c| Ok(write::media_rows(c, &ids)?.pop())).await
    }

    async fn media_usage(&self, user: UserId) -> Result<u64> {
        self.read(move |c| write::media_usage(c, user)).await
    }

    async fn messages_by(
        &self,
        user: UserId,
        after: Option<(ConversationId, natter_proto::Seq)>,
        limit: u32,
    ) -> Result<Vec<natter_proto::Entry>> {
        self.read(move |c| read::messages_by(c, user, after, limit)).await
    }

    async fn media_of(
        &self,
        user: UserId,
        after: Option<String>,
        limit: u32,
    ) -> Result<Vec<MediaRecord>> {
        self.read(move |c| write::media_of(c, user, after.as_deref(), limit)).await
    }

    async fn media_access(&self, user: UserId, id: &str) -> Result<bool> {
        let id = id.to_owned();
        self.read(move |c| write::media_access(c, user, &id)).await
    }

    async fn set_cursors(&self, updates: Vec<CursorUpdate>) -> Result<Vec<Receipt>> {
        self.write(move |c, _| write::set_cursors(c, &updates)).await
    }

    async fn accept_invitation(&self, user: UserId, conversation: ConversationId) -> Result<Ack> {
        let cap = self.limits.max_group_members;
        self.write(move |c, out| write::accept_invitation(c, out, cap, user, conversation)).await
    }

    async fn set_profile(&self, user: UserId, update: ProfileUpdate) -> Result<User> {
        self.write(move |c, _| {
            write::set_profile(c, user, &update)?;
            read::users(c, &[user])?.pop().ok_or(StoreError::NotFound("user"))
        })
        .await
    }

    async fn touch_device(&self, device: DeviceId, at: i64) -> Result<()> {
        self.write(move |c, _| write::touch_device(c, device, at)).await
    }

    async fn set_password(
        &self,
        user: UserId,
        hash: &str,
        keep: DeviceId,
    ) -> Result<Vec<DeviceId>> {
        let hash = hash.to_owned();
        self.write(move |c, _| write::set_password(c, user, &hash, keep)).await
    }

    async fn delete_user(&self, user: UserId) -> Result<Vec<DeviceId>> {
        self.write(move |c, _| write::delete_user(c, user)).await
    }

    async fn free_deleted_handles(&self, deleted_before: i64) -> Result<u64> {
        self.write(move |c, _| write::free_deleted_handles(c, deleted_before)).await
    }

    async fn block(&self, blocker: UserId, blocked: UserId, max: u32) -> Result<()> {
        self.write(move |c, _| write::block(c, blocker, blocked, max)).await
    }

    async fn unblock(&self, blocker: UserId, blocked: UserId) -> Result<()> {
        self.write(move |c, _| write::unblock(c, blocker, blocked)).await
    }

    async fn revoke_device(&self, user: UserId, device: DeviceId) -> Result<()> {
        self.write(move |c, _| write::revoke_device(c, user, device)).await
    }

    async fn delete_device(&self, token: TokenHash) -> Result<()> {
        self.write(move |c, _| write::delete_device(c, &token)).await
    }

    async fn decline_invitation(&self, user: UserId, conversation: ConversationId) -> Result<()> {
        self.write(move |c, _| write::decline_invitation(c, user, conversation)).await
    }

    async fn collect_media(
        &self,
        unattached_before: i64,
        orphaned_before: i64,
    ) -> Result<Collected> {
        self.write(move |c, _| write::collect_media(c, unattached_before, orphaned_before)).await
    }

    async fn add_push_registration(
        &self,
        user: UserId,
        device: DeviceId,
        registration: NewPushRegistration,
    ) -> Result<i64> {
        self.write(move |c, _| push::add_registration(c, user, device, &registration)).await
    }

    async fn push_registrations(&self, user: UserId) -> Result<Vec<PushRegistration>> {
        self.read(move |c| push::registrations(c, user)).await
    }

    async fn delete_push_registration(&self, user: UserId, id: i64) -> Result<()> {
        self.write(move |c, _| push::delete_registration(c, user, id)).await
    }

    async fn drop_push_token(&self, provider: &str, token: &str) -> Result<()> {
        let (provider, token) = (provider.to_owned(), token.to_owned());
        self.write(move |c, _| push::drop_token(c, &provider, &token)).await
    }

    async fn mute_notifications(
        &self,
        user: UserId,
        conversation: Option<ConversationId>,
        until: Option<i64>,
    ) -> Result<()> {
        self.write(move |c, _| push::mute(c, user, conversation, until)).await
    }

    async fn queue_pushes(&self, candidates: Vec<PushCandidate>, now: i64) -> Result<u64> {
        self.write(move |c, _| push::queue(c, &candidates, now)).await
    }

    async fn claim_pushes(&self, now: i64, lease_ms: i64, limit: u32) -> Result<Vec<PushJob>> {
        self.write(move |c, _| push::claim(c, now, lease_ms, limit)).await
    }

    async fn finish_push(&self, id: i64, outcome: PushOutcome) -> Result<()> {
        self.write(move |c, _| push::finish(c, id, outcome)).await
    }

    async fn search(&self, user: UserId, request: SearchRequest) -> Result<SearchPage> {
        self.read(move |c| search::search(c, user, &request)).await
    }

    async fn set_email(&self, user: UserId, email: Option<String>) -> Result<()> {
        self.write(move |c, _| email::set_email(c, user, email.as_deref())).await
    }

    async fn email(&self, user: UserId) -> Result<Option<EmailAddress>> {
        self.read(move |c| email::email(c, user)).await
    }

    async fn verify_email(&self, user: UserId, address: &str, now: i64) -> Result<bool> {
        let address = address.to_owned();
        self.write(move |c, _| email::verify_email(c, user, &address, now)).await
    }

    async fn set_digests(&self, user: UserId, address: &str, on: bool) -> Result<bool> {
        let address = address.to_owned();
        self.write(move |c, _| email::set_digests(c, user, &address, on)).await
    }

    async fn queue_digests(&self, users: Vec<UserId>, due_at: i64, period_ms: i64) -> Result<u64> {
        self.write(move |c, _| email::queue(c, &users, due_at, period_ms)).await
    }

    async fn claim_digests(&self, now: i64, lease_ms: i64, limit: u32) -> Result<Vec<DigestJob>> {
        self.write(move |c, _| email::claim(c, now, lease_ms, limit)).await
    }

    async fn finish_digest(&self, user: UserId, outcome: DigestOutcome) -> Result<()> {
        self.write(move |c, _| email::finish(c, user, outcome)).await
    }

    async fn create_report(&self, report: NewReport) -> Result<i64> {
        self.write(move |c, _| admin::create_report(c, &report)).await
    }

    async fn reports(
        &self,
        status: Option<ReportStatus>,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<Report>> {
        self.read(move |c| admin::reports(c, status, before, limit)).await
    }

    async fn resolve_report(
        &self,
        admin: UserId,
        id: i64,
        status: ReportStatus,
        note: Option<String>,
    ) -> Result<()> {
        self.write(move |c, _| admin::resolve_report(c, admin, id, status, note.as_deref())).await
    }

    async fn is_admin(&self, user: UserId) -> Result<bool> {
        self.read(move |c| admin::is_admin(c, user)).await
    }

    async fn set_admin(&self, user: UserId, admin: bool, actor: Option<UserId>) -> Result<()> {
        self.write(move |c, _| admin::set_admin(c, user, admin, actor)).await
    }

    async fn admin_users(
        &self,
        prefix: Option<String>,
        after: Option<UserId>,
        limit: u32,
    ) -> Result<Vec<AdminUser>> {
        self.read(move |c| admin::admin_users(c, prefix.as_deref(), after, limit)).await
    }

    async fn suspend(
        &self,
        admin: UserId,
        user: UserId,
        until: i64,
        reason: String,
    ) -> Result<Vec<DeviceId>> {
        self.write(move |c, _| admin::suspend(c, admin, user, until, &reason)).await
    }

    async fn restore(&self, admin: UserId, user: UserId) -> Result<()> {
        self.write(move |c, _| admin::restore(c, admin, user)).await
    }

    async fn remove_message(
        &self,
        admin: UserId,
        conversation: ConversationId,
        seq: natter_proto::Seq,
    ) -> Result<Ack> {
        self.write(move |c, out| admin::remove_message(c, out, admin, conversation, seq)).await
    }

    async fn remove_messages_by(&self, admin: UserId, user: UserId, limit: u32) -> Result<u64> {
        self.write(move |c, out| admin::remove_messages_by(c, out, admin, user, limit)).await
    }

    async fn audit_log(&self, before: Option<i64>, limit: u32) -> Result<Vec<AuditEntry>> {
        self.read(move |c| admin::audit_log(c, before, limit)).await
    }

    async fn close(&self) {
        // Dropping the last sender ends the writer loop after it commits what is queued.
        drop(self.jobs_tx.lock().expect("jobs_tx lock poisoned").take());
        let handle = self.writer.lock().expect("writer lock poisoned").take();
        if let Some(handle) = handle {
            let _ = tokio::task::spawn_blocking(move || handle.join()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accounts_from_before_handle_keys_get_theirs_at_open() {
        let conn = Connection::open_in_memory().expect("opens");
        for sql in &MIGRATIONS[..2] {
            conn.execute_batch(sql).expect("old migration");
        }
        conn.pragma_update(None, "user_version", 2).expect("version");
        // Two old accounts whose handles look alike, and one more.
        for handle in ["alice", "\u{430}lice", "bob"] {
            conn.execute(
                "INSERT INTO users (handle, password_hash, created_at) VALUES (?1, 'h', 0)",
                rusqlite::params![handle],
            )
            .expect("old account");
        }
        migrate(&conn).expect("migrates");
        let keys: Vec<(String, Option<String>)> = conn
            .prepare("SELECT handle, handle_key FROM users ORDER BY id")
            .and_then(|mut st| {
                st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<Result<_, _>>()
            })
            .expect("reads");
        let key = |s: &str| Some(s.to_owned());
        assert_eq!(
            keys,
            [
                ("alice".to_owned(), key("alice")),
                ("\u{430}lice".to_owned(), None),
                ("bob".to_owned(), key("bob"))
            ]
        );
        // Opening again changes nothing and fails on nothing.
        migrate(&conn).expect("migrates again");
    }

    #[test]
    fn messages_from_before_search_are_indexed_when_it_comes() {
        let conn = Connection::open_in_memory().expect("opens");
        for sql in &MIGRATIONS[..SEARCH_MIGRATION - 1] {
            conn.execute_batch(sql).expect("old migration");
        }
        conn.pragma_update(None, "user_version", SEARCH_MIGRATION as i64 - 1).expect("version");
        conn.execute_batch(
            "INSERT INTO users (id, handle, password_hash, created_at) VALUES (1, 'ann', 'h', 0);
             INSERT INTO conversations (id, kind, last_seq, last_activity, created_at)
                 VALUES (1, 'group', 4, 0, 0);
             INSERT INTO members (conversation_id, user_id, role, joined_seq) VALUES (1, 1, 'owner', 1);
             INSERT INTO entries (conversation_id, seq, id, sender, ts, kind, body)
                 VALUES (1, 2, 'a', 1, 5, 'message', '{\"body\":\"Héllo wörld\"}'),
                        (1, 3, 'b', 1, 6, 'message',
                         '{\"body\":\"gone\",\"attachments\":[{\"id\":\"m\",\"name\":\"plan.pdf\"}]}'),
                        (1, 4, 'c', 1, 7, 'message',
                         '{\"body\":\"hello\",\"attachments\":[{\"id\":\"n\",\"name\":\"map.png\"}]}');
             INSERT INTO message_state (conversation_id, seq, sender, body, deleted)
                 VALUES (1, 2, 1, 'Héllo wörld', 0), (1, 3, 1, '', 1), (1, 4, 1, 'hello', 0);",
        )
        .expect("old messages");
        migrate(&conn).expect("migrates");
        let hits = |q: &str| -> Vec<(i64, i64, String, bool, String)> {
            conn.prepare(
                "SELECT s.seq, s.ts, s.body, s.has_attachment, s.names
                 FROM search_index
                 JOIN message_state s ON s.conversation_id = search_index.rowid >> 32
                                     AND s.seq = search_index.rowid & 4294967295
                 WHERE search_index MATCH ?1 ORDER BY s.seq",
            )
            .and_then(|mut st| {
                st.query_map([q], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))?
                    .collect::<Result<_, _>>()
            })
            .expect("searches")
        };
        assert_eq!(
            hits("hello"),
            [
                (2, 5, "Héllo wörld".to_owned(), false, String::new()),
                (4, 7, "hello".to_owned(), true, "map.png".to_owned())
            ]
        );
        assert_eq!(hits("map").len(), 1, "attachment names are indexed");
        assert_eq!(hits("map"), hits("png"));
        assert!(hits("plan").is_empty() && hits("gone").is_empty(), "the deleted one is not");
    }
}

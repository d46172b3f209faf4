//! Online backups of the embedded store: a consistent copy of a database a node is writing
//! to, taken from another process, and the checks a copy passes before a node runs on it.

use std::path::Path;

use rusqlite::{Connection, OpenFlags};

use super::{BUSY_TIMEOUT, MIGRATIONS, internal};
use crate::{Result, StoreError};

/// What a copy holds, as [`check`] found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// The schema version (migrations applied).
    pub schema_version: u32,
    pub users: u64,
    pub conversations: u64,
    /// Log entries, over all conversations.
    pub entries: u64,
    /// The media objects the copy refers to (those of uploads; not the orphaned ones waiting
    /// to be collected): SHA-256 (hex) and size. The files themselves are the caller's.
    pub blobs: Vec<(String, u64)>,
}

/// Copies the live database `src` into the new file `dest` with SQLite's online backup API,
/// in one step: the copy is read in one read transaction, so it is the database as of one
/// commit however much the node writes meanwhile (WAL keeps the node's writer going; its
/// checkpoints wait, so the WAL grows for as long as the copy takes). The copy is then
/// checked.
pub fn backup(src: &Path, dest: &Path) -> Result<Summary> {
    if dest.exists() {
        return Err(StoreError::BadRequest(format!("{} already exists", dest.display())));
    }
    let from =
        Connection::open_with_flags(src, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(internal)?;
    from.busy_timeout(BUSY_TIMEOUT).map_err(internal)?;
    let mut to = Connection::open(dest).map_err(internal)?;
    {
        let copy = rusqlite::backup::Backup::new(&from, &mut to).map_err(internal)?;
        // -1: every page in one step. Busy and locked (the node's writer holding a lock for
        // a moment) are retried, for at most BUSY_TIMEOUT.
        let deadline = std::time::Instant::now() + BUSY_TIMEOUT;
        loop {
            match copy.step(-1).map_err(internal)? {
                rusqlite::backup::StepResult::Done => break,
                _ if std::time::Instant::now() > deadline => {
                    return Err(StoreError::Unavailable("the store stayed locked".to_owned()));
                }
                _ => std::thread::sleep(std::time::Duration::from_millis(10)),
            }
        }
    }
    // One self-contained file: the copied header still says WAL; a rollback journal needs
    // no `-wal` or `-shm` beside the file (and none is left), so the copy can be read from
    // read-only media. A node starting on it switches it back to WAL.
    to.query_row("PRAGMA journal_mode=DELETE", [], |_| Ok(())).map_err(internal)?;
    drop(to);
    check(dest)
}

/// Checks a copy: SQLite's integrity check, a schema this build knows, every conversation's
/// log contiguous from 1 to its last seq (the log is append-only: a gap or a missing tail
/// means a damaged copy), and lists the media objects it refers to.
pub fn check(path: &Path) -> Result<Summary> {
    if !path.is_file() {
        return Err(StoreError::BadRequest(format!("{}: no such database file", path.display())));
    }
    let conn =
        Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(internal)?;
    let broken = |why: String| StoreError::Internal(format!("{}: {why}", path.display()));
    let integrity: String =
        conn.query_row("PRAGMA integrity_check", [], |r| r.get(0)).map_err(internal)?;
    if integrity != "ok" {
        return Err(broken(format!("integrity check: {integrity}")));
    }
    let schema_version: u32 =
        conn.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(internal)?;
    if schema_version as usize > MIGRATIONS.len() || schema_version == 0 {
        return Err(broken(format!(
            "schema version {schema_version}; this build knows 1 to {}",
            MIGRATIONS.len()
        )));
    }
    let count = |sql: &str| conn.query_row(sql, [], |r| r.get::<_, i64>(0)).map_err(internal);
    let users = count("SELECT count(*) FROM users")? as u64;
    let conversations = count("SELECT count(*) FROM conversations")? as u64;
    let entries = count("SELECT count(*) FROM entries")? as u64;
    // (conversation, seq) is the key, so count = last = max and min = 1 is exactly 1..=last.
    let mut gaps = conn
        .prepare(
            "SELECT c.id, c.last_seq, count(e.seq), coalesce(min(e.seq), 0), coalesce(max(e.seq), 0)
             FROM conversations c LEFT JOIN entries e ON e.conversation_id = c.id
             GROUP BY c.id
             HAVING count(e.seq) != c.last_seq OR coalesce(max(e.seq), 0) != c.last_seq
                 OR (c.last_seq > 0 AND min(e.seq) != 1)
             LIMIT 5",
        )
        .map_err(internal)?;
    let gaps: Vec<String> = gaps
        .query_map([], |r| {
            Ok(format!(
                "conversation {} has {} entries ({}..={}) for last seq {}",
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, i64>(4)?,
                r.get::<_, i64>(1)?
            ))
        })
        .map_err(internal)?
        .collect::<rusqlite::Result<_>>()
        .map_err(internal)?;
    if !gaps.is_empty() {
        return Err(broken(format!("logs not contiguous: {}", gaps.join("; "))));
    }
    let mut blobs = conn
        .prepare("SELECT sha256, size FROM blobs WHERE orphaned_at IS NULL ORDER BY sha256")
        .map_err(internal)?;
    let blobs = blobs
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64)))
        .map_err(internal)?
        .collect::<rusqlite::Result<_>>()
        .map_err(internal)?;
    Ok(Summary { schema_version, users, conversations, entries, blobs })
}

//! What the SDK keeps between runs ([`Snapshot`]: cursors and outbox) and where
//! ([`StateStore`]): in memory ([`MemoryStore`], the default) or in a file ([`FileStore`]).
//!
//! The SDK saves a whole snapshot each time: outbox additions at once (before the send goes
//! on the wire), cursor moves and acks coalesced. Calls run on a blocking thread, so a store
//! may do synchronous I/O.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use natter_proto::{ConversationId, NewEntry, Seq, UserId};
use serde::{Deserialize, Serialize};

/// The SDK's durable state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Whose state this is. A snapshot of another user is discarded on connect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<UserId>,
    /// The last `seq` handed to the app per conversation.
    #[serde(default, deserialize_with = "natter_proto::cursor_map")]
    pub cursors: BTreeMap<ConversationId, Seq>,
    /// Sends not yet acked, in the order the app wrote them.
    #[serde(default)]
    pub outbox: Vec<OutboxItem>,
}

/// One queued send.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxItem {
    /// The idempotency key: a retry with it never stores a second entry.
    pub client_msg_id: String,
    /// Where it goes.
    pub conversation: ConversationId,
    /// What it appends.
    pub entry: NewEntry,
}

/// Why a store could not load or save.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Reading or writing failed.
    #[error("state store i/o failed")]
    Io(#[from] std::io::Error),
    /// The stored state does not parse.
    #[error("stored state is corrupt")]
    Corrupt(#[from] serde_json::Error),
    /// Any other failure of a custom store.
    #[error("state store failed: {0}")]
    Other(String),
}

/// Where the SDK keeps its [`Snapshot`]. Implement it to keep the state in the app's own
/// database; calls come from a blocking thread, one at a time.
pub trait StateStore: Send + Sync + 'static {
    /// The last saved snapshot, or an empty one if nothing was ever saved.
    fn load(&self) -> Result<Snapshot, StoreError>;
    /// Replaces the saved snapshot; when it returns, a later `load` must see it.
    fn save(&self, snapshot: &Snapshot) -> Result<(), StoreError>;
}

/// Keeps the state in memory: resumes across reconnects, not across app restarts (unless the
/// app keeps the store and hands it to the next client).
#[derive(Debug, Default)]
pub struct MemoryStore {
    // Held only to clone in or out; never across an await.
    state: Mutex<Snapshot>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    /// What was saved last.
    pub fn snapshot(&self) -> Snapshot {
        self.state.lock().expect("memory store lock poisoned").clone()
    }
}

impl StateStore for MemoryStore {
    fn load(&self) -> Result<Snapshot, StoreError> {
        Ok(self.snapshot())
    }

    fn save(&self, snapshot: &Snapshot) -> Result<(), StoreError> {
        *self.state.lock().expect("memory store lock poisoned") = snapshot.clone();
        Ok(())
    }
}

/// Keeps the state in one JSON file. Each save writes a temporary file next to it, syncs it
/// and renames it over the old one, so a crash leaves either the old state or the new one.
#[derive(Debug, Clone)]
pub struct FileStore {
    path: PathBuf,
}

/// The file's format, versioned so that a later SDK can read an older file.
#[derive(Serialize, Deserialize)]
struct FileFormat {
    version: u32,
    #[serde(flatten)]
    snapshot: Snapshot,
}

const FILE_VERSION: u32 = 1;

impl FileStore {
    /// A store at `path` (created on the first save; its directory must exist).
    pub fn new(path: impl Into<PathBuf>) -> FileStore {
        FileStore { path: path.into() }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn temp_path(&self) -> PathBuf {
        let mut name = self.path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
        name.push(".tmp");
        self.path.with_file_name(name)
    }
}

impl StateStore for FileStore {
    fn load(&self) -> Result<Snapshot, StoreError> {
        let bytes = match std::fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Snapshot::default());
            }
            Err(err) => return Err(err.into()),
        };
        let file: FileFormat = serde_json::from_slice(&bytes)?;
        if file.version != FILE_VERSION {
            return Err(StoreError::Other(format!(
                "unsupported state file version {}",
                file.version
            )));
        }
        Ok(file.snapshot)
    }

    fn save(&self, snapshot: &Snapshot) -> Result<(), StoreError> {
        let file = FileFormat { version: FILE_VERSION, snapshot: snapshot.clone() };
        let bytes = serde_json::to_vec(&file)?;
        let tmp = self.temp_path();
        let mut out = std::fs::File::create(&tmp)?;
        out.write_all(&bytes)?;
        out.sync_all()?;
        drop(out);
        std::fs::rename(&tmp, &self.path)?;
        // The rename itself is durable once the directory is synced; not every platform
        // can open a directory, and the data is safe either way, so a failure is ignored.
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty())
            && let Ok(dir) = std::fs::File::open(dir)
        {
            let _ = dir.sync_all();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Snapshot {
        Snapshot {
            user: Some(UserId(7)),
            cursors: [(ConversationId(3), 41), (ConversationId(12), 5)].into_iter().collect(),
            outbox: vec![
                OutboxItem {
                    client_msg_id: "a".into(),
                    conversation: ConversationId(3),
                    entry: NewEntry::Message {
                        body: "hi".into(),
                        reply_to: Some(2),
                        attachments: Vec::new(),
                        mentions: Vec::new(),
                    },
                },
                OutboxItem {
                    client_msg_id: "b".into(),
                    conversation: ConversationId(12),
                    entry: NewEntry::Reaction { target: 4, emoji: "+1".into(), remove: false },
                },
            ],
        }
    }

    #[test]
    fn file_store_round_trips_and_starts_empty() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = FileStore::new(dir.path().join("state.json"));
        assert_eq!(store.load().expect("load"), Snapshot::default());
        store.save(&sample()).expect("save");
        assert_eq!(store.load().expect("load"), sample());
        assert!(!store.temp_path().exists(), "the temporary file is renamed away");

        let mut next = sample();
        next.outbox.remove(0);
        next.cursors.insert(ConversationId(3), 50);
        store.save(&next).expect("save again");
        assert_eq!(FileStore::new(store.path()).load().expect("load"), next);
    }

    #[test]
    fn file_store_reports_a_corrupt_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("state.json");
        std::fs::write(&path, b"{not json").expect("write");
        assert!(matches!(FileStore::new(&path).load(), Err(StoreError::Corrupt(_))));
    }

    #[test]
    fn memory_store_keeps_the_last_save() {
        let store = MemoryStore::new();
        store.save(&sample()).expect("save");
        assert_eq!(store.load().expect("load"), sample());
    }
}

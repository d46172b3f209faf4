//! Resumable uploads: `POST /v1/media/uploads` opens one of a declared length, each
//! `PATCH` appends at the offset the server holds (`Upload-Offset`, as in tus 1.0 core),
//! `HEAD` says that offset after a broken connection. The bytes wait in a staging file of
//! this node; the upload is dropped after `UPLOAD_TTL` without a `PATCH`, or at restart.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use natter_proto::{ErrorCode, UserId};

use super::Partial;
use crate::error::{ApiError, ApiResult};

/// An open upload is dropped this long after its last `PATCH` began.
pub(crate) const UPLOAD_TTL: Duration = Duration::from_secs(24 * 3600);
/// Open uploads one user may have at once.
pub(crate) const MAX_OPEN_PER_USER: usize = 16;
/// Open uploads of this node.
const MAX_OPEN: usize = 4096;

/// What a resumable upload is, besides its bytes.
pub(crate) struct Meta {
    pub(crate) owner: UserId,
    pub(crate) length: u64,
    pub(crate) declared: Option<String>,
    pub(crate) name: Option<String>,
}

/// One open upload; its lock is held by the `PATCH` writing to it.
pub(crate) struct Open {
    pub(crate) meta: Meta,
    pub(crate) partial: Partial,
    /// Whether its first bytes were checked against the allow-list.
    pub(crate) sniffed: bool,
    touched: Instant,
}

pub(crate) type Slot = Arc<tokio::sync::Mutex<Option<Open>>>;

/// The node's open uploads by id.
#[derive(Default)]
pub(crate) struct Uploads {
    // A std mutex: map lookups only, never across an await.
    open: Mutex<HashMap<String, (UserId, Slot)>>,
}

impl Uploads {
    /// Opens an upload under a new id.
    pub(crate) fn open(&self, meta: Meta, partial: Partial) -> ApiResult<String> {
        let mut open = self.open.lock().expect("uploads lock poisoned");
        let mine = open.values().filter(|(owner, _)| *owner == meta.owner).count();
        if mine >= MAX_OPEN_PER_USER || open.len() >= MAX_OPEN {
            return Err(ApiError::too_many_requests(
                "too many unfinished uploads: finish or delete one",
                Duration::from_secs(60),
            ));
        }
        let id = uuid::Uuid::now_v7().simple().to_string();
        let owner = meta.owner;
        let slot = Open { meta, partial, sniffed: false, touched: Instant::now() };
        open.insert(id.clone(), (owner, Arc::new(tokio::sync::Mutex::new(Some(slot)))));
        Ok(id)
    }

    /// The caller's upload `id` (another user's is `not_found`, as a missing one).
    pub(crate) fn get(&self, id: &str, user: UserId) -> ApiResult<Slot> {
        let open = self.open.lock().expect("uploads lock poisoned");
        match open.get(id) {
            Some((owner, slot)) if *owner == user => Ok(slot.clone()),
            _ => Err(ApiError::not_found("upload")),
        }
    }

    /// Forgets upload `id` (finished, refused or deleted); its slot must be emptied first.
    pub(crate) fn remove(&self, id: &str) {
        self.open.lock().expect("uploads lock poisoned").remove(id);
    }

    /// Drops uploads nobody has written to for `UPLOAD_TTL` (their staging files go).
    pub(crate) fn expire(&self) {
        let mut open = self.open.lock().expect("uploads lock poisoned");
        open.retain(|_, (_, slot)| match slot.try_lock() {
            Ok(mut guard) => {
                let stale = guard.as_ref().is_none_or(|o| o.touched.elapsed() > UPLOAD_TTL);
                if stale {
                    guard.take();
                }
                !stale
            }
            // A PATCH is writing to it.
            Err(_) => true,
        });
    }
}

impl Open {
    /// Checks a `PATCH`'s `Upload-Offset` against what the server holds.
    pub(crate) fn at(&mut self, offset: u64) -> ApiResult<()> {
        self.touched = Instant::now();
        if offset != self.partial.size() {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                format!("Upload-Offset is {offset}, the upload is at {}", self.partial.size()),
            ));
        }
        Ok(())
    }
}

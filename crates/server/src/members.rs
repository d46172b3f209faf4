//! [`MemberCache`]: each conversation's member ids, for routing and cursor checks.
//!
//! Loaded from the store on first use. Every committed entry carries the `seq` of its
//! conversation's latest membership change (`Committed::members_seq`); the cache remembers which
//! change its list reflects and reloads when an entry needs a newer one. So an entry is
//! routed with the members it was committed under (or later ones), even when the membership
//! change was committed on another node whose bus message has not arrived yet. A list may
//! be newer than an entry: a member added since gets it early (its session fetches the
//! conversation's latest page), one removed since misses it live and reads it with the
//! removal's gap fill.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use natter_proto::{Committed, ConversationId, EntryBody, Seq, UserId};
use natter_store::{Result, Store};

pub(crate) struct MemberCache {
    store: Arc<dyn Store>,
    // A std mutex: lookups and updates are map operations; loads happen outside the lock.
    map: Mutex<HashMap<ConversationId, Cached>>,
}

#[derive(Clone)]
struct Cached {
    list: Arc<Vec<UserId>>,
    /// The membership change the list reflects at least (0: unknown).
    version: Seq,
}

impl MemberCache {
    pub(crate) fn new(store: Arc<dyn Store>) -> MemberCache {
        MemberCache { store, map: Mutex::new(HashMap::new()) }
    }

    /// The members of `conv`, loading them on a miss.
    pub(crate) async fn get(&self, conv: ConversationId) -> Result<Arc<Vec<UserId>>> {
        if let Some(cached) = self.map.lock().expect("member cache poisoned").get(&conv) {
            return Ok(cached.list.clone());
        }
        let loaded = Arc::new(self.store.member_ids(conv).await?);
        let mut map = self.map.lock().expect("member cache poisoned");
        Ok(map.entry(conv).or_insert(Cached { list: loaded, version: 0 }).list.clone())
    }

    /// Whether `user` is a member of `conv`.
    pub(crate) async fn contains(&self, conv: ConversationId, user: UserId) -> Result<bool> {
        Ok(self.get(conv).await?.contains(&user))
    }

    /// Brings the list up to a committed entry's membership version and returns the members
    /// to deliver it to: a removed member still gets the entry that removes them.
    pub(crate) async fn apply(&self, committed: &Committed) -> Result<Arc<Vec<UserId>>> {
        let Committed { entry, members_seq: needed } = committed;
        let (conv, needed) = (entry.conversation, *needed);
        let list = if let EntryBody::Created { members, .. } = &entry.body {
            let list = Arc::new(members.clone());
            self.remember(conv, list.clone(), entry.seq);
            list
        } else {
            let cached = self.map.lock().expect("member cache poisoned").get(&conv).cloned();
            match cached {
                Some(cached) if cached.version >= needed => cached.list,
                _ => {
                    // Missing, or older than this entry: read what the store has now.
                    let loaded = Arc::new(self.store.member_ids(conv).await?);
                    self.remember(conv, loaded.clone(), needed);
                    loaded
                }
            }
        };
        match &entry.body {
            EntryBody::MemberRemoved { user, .. } if !list.contains(user) => {
                let mut deliver = (*list).clone();
                deliver.push(*user);
                Ok(Arc::new(deliver))
            }
            _ => Ok(list),
        }
    }

    /// Keeps `list` unless the cache already holds a newer one.
    fn remember(&self, conv: ConversationId, list: Arc<Vec<UserId>>, version: Seq) {
        let mut map = self.map.lock().expect("member cache poisoned");
        match map.get(&conv) {
            Some(cached) if cached.version > version => {}
            _ => {
                map.insert(conv, Cached { list, version });
            }
        }
    }
}

//! [`MemberCache`]: each conversation's member ids, for routing and cursor checks.
//!
//! Loaded from the store on first use and then kept current by the router, which sees every
//! membership entry in commit order. A load races with entries still on their way to the
//! router; both directions are harmless: at worst a member who was just added gets an entry
//! early (its session fetches the conversation's latest page) or one just removed misses it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use natter_proto::{ConversationId, EntryBody, UserId};
use natter_store::{Result, Store};

pub(crate) struct MemberCache {
    store: Arc<dyn Store>,
    // A std mutex: lookups and updates are map operations; loads happen outside the lock.
    map: Mutex<HashMap<ConversationId, Arc<Vec<UserId>>>>,
}

impl MemberCache {
    pub(crate) fn new(store: Arc<dyn Store>) -> MemberCache {
        MemberCache { store, map: Mutex::new(HashMap::new()) }
    }

    /// The members of `conv`, loading them on a miss.
    pub(crate) async fn get(&self, conv: ConversationId) -> Result<Arc<Vec<UserId>>> {
        if let Some(list) = self.map.lock().expect("member cache poisoned").get(&conv) {
            return Ok(list.clone());
        }
        let loaded = Arc::new(self.store.member_ids(conv).await?);
        let mut map = self.map.lock().expect("member cache poisoned");
        Ok(map.entry(conv).or_insert(loaded).clone())
    }

    /// Forgets every list (cluster mode, after bus messages may have been lost): each is
    /// loaded again on its next use.
    pub(crate) fn clear(&self) {
        self.map.lock().expect("member cache poisoned").clear();
    }

    /// Whether `user` is a member of `conv`.
    pub(crate) async fn contains(&self, conv: ConversationId, user: UserId) -> Result<bool> {
        Ok(self.get(conv).await?.contains(&user))
    }

    /// Applies a committed entry's membership effect. Returns the members to deliver the
    /// entry to: a removed member still gets the entry that removes them.
    pub(crate) async fn apply(
        &self,
        conv: ConversationId,
        body: &EntryBody,
    ) -> Result<Arc<Vec<UserId>>> {
        if let EntryBody::Created { members, .. } = body {
            let list = Arc::new(members.clone());
            self.map.lock().expect("member cache poisoned").insert(conv, list.clone());
            return Ok(list);
        }
        let current = self.get(conv).await?;
        let mut map = self.map.lock().expect("member cache poisoned");
        match body {
            EntryBody::MemberAdded { user, .. } if !current.contains(user) => {
                let mut next = (*current).clone();
                next.push(*user);
                let next = Arc::new(next);
                map.insert(conv, next.clone());
                Ok(next)
            }
            EntryBody::MemberRemoved { user } => {
                let next: Vec<UserId> = current.iter().copied().filter(|u| u != user).collect();
                map.insert(conv, Arc::new(next));
                let mut deliver = (*current).clone();
                if !deliver.contains(user) {
                    deliver.push(*user);
                }
                Ok(Arc::new(deliver))
            }
            _ => Ok(current),
        }
    }
}

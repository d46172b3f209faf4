//! Blocks (issue 13, part 3) on the node: the REST routes' effects beyond the store, and a
//! cache of who is in a block relation with whom, for what never touches the store (typing).
//!
//! The store enforces what is durable (new direct conversations, adds to groups, writes in a
//! blocked direct conversation, presence subscriptions through `share_conversation`). What
//! is ephemeral is filtered here: typing frames skip the users in a block relation with the
//! typist, and a new block ends presence between the two users at once, on every node.
//! A change is broadcast on the bus; a node that missed it (pub/sub is at most once) has its
//! cache entries lapse after [`TTL`].

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use natter_proto::{ServerFrame, UserId};

use crate::error::ApiResult;
use crate::state::AppState;

/// How long a cached relation set is trusted.
const TTL: Duration = Duration::from_secs(60);
/// Most users whose relations a node caches; past it the cache starts over.
const MAX_CACHED: usize = 100_000;

type Relations = Arc<HashSet<UserId>>;

#[derive(Default)]
pub(crate) struct BlockCache {
    // A std mutex: map operations only; the store is read outside it.
    cached: Mutex<HashMap<UserId, (Instant, Relations)>>,
}

impl BlockCache {
    /// Everyone `user` blocks or is blocked by.
    pub(crate) async fn relations(&self, state: &AppState, user: UserId) -> ApiResult<Relations> {
        let now = Instant::now();
        if let Some((at, set)) = self.cached.lock().expect("blocks lock poisoned").get(&user)
            && now.duration_since(*at) < TTL
        {
            return Ok(set.clone());
        }
        let set: Relations =
            Arc::new(state.store().block_relations(user).await?.into_iter().collect());
        let mut cached = self.cached.lock().expect("blocks lock poisoned");
        if cached.len() >= MAX_CACHED {
            cached.clear();
        }
        cached.insert(user, (now, set.clone()));
        Ok(set)
    }

    fn forget(&self, users: [UserId; 2]) {
        let mut cached = self.cached.lock().expect("blocks lock poisoned");
        for user in users {
            cached.remove(&user);
        }
    }
}

/// What a block or unblock changes beyond the store, on this node: the cache, presence
/// between the two (ended by a block; a new subscription may start it again after an
/// unblock), and — on the node that made the change — the blocker's devices are told.
pub(crate) fn changed(state: &AppState, blocker: UserId, blocked: UserId) {
    state.blocks().forget([blocker, blocked]);
    state.presence().forget(blocker, blocked);
    state.presence().forget(blocked, blocker);
}

/// After the store changed `blocker`'s list: this node and every other one apply
/// [`changed`], and the blocker's sessions get their list as it is now.
pub(crate) async fn publish(state: &AppState, blocker: UserId, blocked: UserId) -> ApiResult<()> {
    changed(state, blocker, blocked);
    crate::cluster::blocked(state, blocker, blocked).await;
    let list = state.store().blocks(blocker).await?;
    let frame = ServerFrame::Blocks { blocked: list }.to_json();
    crate::router::to_users(state, vec![blocker], frame.into());
    Ok(())
}

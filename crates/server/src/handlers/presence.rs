//! # `subscribe_presence` and `set_status` frames, and their REST forms for HTTP streams

use std::collections::HashSet;

use natter_cluster::SessionId;
use natter_proto::{Presence, Status, UserId};

use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// Replaces what session `sid` of `user` watches. Users beyond the cap, unknown users and
/// users who share no conversation with `user` are refused (listed in the second vector).
pub(crate) async fn subscribe(
    state: &AppState,
    user: UserId,
    sid: SessionId,
    users: Vec<UserId>,
) -> ApiResult<(Vec<Presence>, Vec<UserId>)> {
    let cap = state.cfg().limits.max_presence_subscriptions;
    let mut seen = HashSet::new();
    let wanted: Vec<UserId> = users.into_iter().filter(|u| seen.insert(*u)).collect();
    let (candidates, mut denied) = if wanted.len() > cap {
        (wanted[..cap].to_vec(), wanted[cap..].to_vec())
    } else {
        (wanted, Vec::new())
    };
    let allowed = state.store().share_conversation(user, &candidates).await?;
    denied.extend(candidates.iter().filter(|u| !allowed.contains(u)));
    if state.presence().owner(sid) != Some(user) {
        return Err(ApiError::not_found("session"));
    }
    // Users on other nodes: their presence is read from Redis before watching starts.
    let fresh = state.presence().unwatched(&allowed);
    crate::cluster::reseed_presence(state, fresh).await;
    Ok((state.presence().subscribe(sid, &allowed), denied))
}

/// A session says it is online or away (offline is what no session means).
pub(crate) fn set_status(
    state: &AppState,
    user: UserId,
    sid: SessionId,
    status: Status,
) -> ApiResult<()> {
    if status == Status::Offline {
        return Err(ApiError::bad_request("status is online or away"));
    }
    if state.presence().owner(sid) != Some(user) {
        return Err(ApiError::not_found("session"));
    }
    state.presence().set_status(user, sid, status);
    Ok(())
}

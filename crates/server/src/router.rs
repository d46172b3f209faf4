//! Routing: the third loop. Committed entries arrive from the store's commit feed in commit
//! order; each is serialized once and offered to every live session of every member.
//! Cursor reports are coalesced here too and told to the other members as receipts.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::ws::Utf8Bytes;
use natter_proto::{ConversationId, Entry, Receipt, Seq, ServerFrame, UserId};
use natter_store::CursorUpdate;
use tokio::sync::mpsc;

use crate::cluster::Publish;
use crate::delivery::Outbound;
use crate::state::AppState;

/// An entry on its way to sessions: serialized once, shared by every recipient.
pub(crate) struct Routed {
    pub(crate) conversation: ConversationId,
    pub(crate) seq: Seq,
    pub(crate) frame: Utf8Bytes,
    pub(crate) routed_at: Instant,
    /// Whether it changes who is in the conversation (its size may cross the large-group
    /// threshold).
    pub(crate) membership: bool,
}

/// Consumes the commit feed until the store closes it. In cluster mode each batch then goes
/// to the bus for the other nodes.
pub(crate) async fn run(state: AppState, mut feed_rx: mpsc::Receiver<Vec<Entry>>) {
    while let Some(batch) = feed_rx.recv().await {
        let routed_at = Instant::now();
        let mut remote = Vec::new();
        for entry in batch {
            let copy = state.cluster().is_some().then(|| entry.clone());
            let members = fan_out_local(&state, entry, routed_at).await;
            if let (Some(entry), Some(members)) = (copy, members) {
                remote.push((entry, members));
            }
        }
        if let Some(cluster) = state.cluster()
            && !remote.is_empty()
        {
            cluster.publish(Publish::Entries(remote));
        }
    }
    tracing::debug!("router stopped");
}

/// Offers a committed entry to this node's sessions of its members; returns the members.
pub(crate) async fn fan_out_local(
    state: &AppState,
    mut entry: Entry,
    routed_at: Instant,
) -> Option<Arc<Vec<UserId>>> {
    let conv = entry.conversation;
    let members = match state.members().apply(&entry).await {
        Ok(members) => members,
        Err(err) => {
            // The entry is durable; members will get it on sync.
            tracing::warn!(%conv, seq = entry.seq, error = %err, "cannot load members");
            return None;
        }
    };
    let seq = entry.seq;
    let membership = natter_store::changes_members(&entry.body);
    // Server-internal: clients never see it.
    entry.members_seq = None;
    let frame = Utf8Bytes::from(ServerFrame::Entry { entry }.to_json());
    let routed = Arc::new(Routed { conversation: conv, seq, frame, routed_at, membership });
    state.sessions().for_each_session(&members, |_, _, session| {
        session.offer(Outbound::Entry(routed.clone()));
    });
    Some(members)
}

/// Coalesces cursor reports: the latest per (conversation, member) is written once per
/// window, and only the changes that took effect are sent as receipts.
pub(crate) async fn run_receipts(state: AppState, mut rx: mpsc::Receiver<CursorUpdate>) {
    let mut pending: HashMap<(ConversationId, UserId), CursorUpdate> = HashMap::new();
    let mut tick = tokio::time::interval(state.cfg().limits.receipt_flush());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            update = rx.recv() => match update {
                Some(u) => merge(&mut pending, u),
                None => break,
            },
            _ = tick.tick() => flush(&state, &mut pending).await,
            () = state.shutdown_token().cancelled() => {
                while let Ok(u) = rx.try_recv() {
                    merge(&mut pending, u);
                }
                break;
            }
        }
    }
    flush(&state, &mut pending).await;
}

fn merge(pending: &mut HashMap<(ConversationId, UserId), CursorUpdate>, u: CursorUpdate) {
    let slot = pending.entry((u.conversation, u.user)).or_insert(CursorUpdate {
        delivered: None,
        read: None,
        ..u
    });
    slot.delivered = slot.delivered.max(u.delivered);
    slot.read = slot.read.max(u.read);
}

async fn flush(state: &AppState, pending: &mut HashMap<(ConversationId, UserId), CursorUpdate>) {
    if pending.is_empty() {
        return;
    }
    let updates: Vec<CursorUpdate> = pending.drain().map(|(_, u)| u).collect();
    let receipts = match state.store().set_cursors(updates).await {
        Ok(receipts) => receipts,
        Err(err) => {
            tracing::warn!(error = %err, "cursor write failed; clients report again");
            return;
        }
    };
    for receipt in receipts {
        deliver_receipt(state, receipt).await;
    }
}

async fn deliver_receipt(state: &AppState, receipt: Receipt) {
    let Ok(members) = state.members().get(receipt.conversation).await else {
        return;
    };
    let frame = Utf8Bytes::from(ServerFrame::Receipt { receipt }.to_json());
    state.sessions().for_each_session(&members, |_, _, session| {
        session.offer(Outbound::Frame(frame.clone()));
    });
    if let Some(cluster) = state.cluster() {
        cluster.to_users(members.to_vec(), frame);
    }
}

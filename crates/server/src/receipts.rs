//! The receipts coalescer: cursor reports from every transport are merged here, the latest
//! per (conversation, member) is written once per window, and only the changes that took
//! effect are told to the conversation's members as receipts.

use std::collections::HashMap;

use natter_proto::{ConversationId, Receipt, ServerFrame, UserId};
use natter_store::CursorUpdate;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::state::AppState;

/// Coalesces until the node shuts down, then flushes what is pending.
pub(crate) async fn run(state: AppState, mut rx: mpsc::Receiver<CursorUpdate>) {
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
        deliver(state, receipt).await;
    }
}

async fn deliver(state: &AppState, receipt: Receipt) {
    let Ok(members) = state.members().get(receipt.conversation).await else {
        return;
    };
    let frame = Utf8Bytes::from(ServerFrame::Receipt { receipt }.to_json());
    crate::router::to_users(state, members.to_vec(), frame);
}

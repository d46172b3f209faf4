//! Routing: the third loop. Committed entries arrive from the store's commit feed in commit
//! order, and other nodes' entries and frames from the bus port's inbox; each entry is
//! serialized once and offered to every live session of every member here. Local commits
//! then go to the port for the other nodes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use natter_proto::{Committed, ConversationId, Seq, ServerFrame, UserId};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tracing::Instrument;

use crate::delivery::Outbound;
use crate::port::{Inbound, Publish};
use crate::state::AppState;

/// An entry on its way to sessions: serialized once, shared by every recipient.
pub(crate) struct Routed {
    pub(crate) conversation: ConversationId,
    pub(crate) seq: Seq,
    pub(crate) frame: Utf8Bytes,
    pub(crate) routed_at: Instant,
    /// The entry's commit time, in milliseconds since the epoch.
    pub(crate) committed_ms: i64,
    /// Whether it changes who is in the conversation (its size may cross the large-group
    /// threshold).
    pub(crate) membership: bool,
}

/// Routes until the store closes the commit feed (the inbox ends with the cluster's tasks).
pub(crate) async fn run(
    state: AppState,
    mut feed_rx: mpsc::Receiver<Vec<Committed>>,
    mut inbound_rx: mpsc::Receiver<Inbound>,
) {
    let mut inbox_open = true;
    loop {
        tokio::select! {
            batch = feed_rx.recv() => match batch {
                Some(batch) => {
                    let depth = feed_rx.len() as f64;
                    metrics::gauge!("natter_queue_depth", "queue" => "router").set(depth);
                    route_commits(&state, batch).await
                }
                None => break,
            },
            inbound = inbound_rx.recv(), if inbox_open => match inbound {
                Some(inbound) => {
                    let depth = inbound_rx.len() as f64;
                    metrics::gauge!("natter_queue_depth", "queue" => "bus_inbound").set(depth);
                    route_inbound(&state, inbound).await
                }
                None => inbox_open = false,
            },
        }
    }
    tracing::debug!("router stopped");
}

/// One committed batch: to local sessions, then (when anyone else listens) to the port.
async fn route_commits(state: &AppState, batch: Vec<Committed>) {
    let routed_at = Instant::now();
    let publish = state.port().has_peers();
    let mut remote = Vec::new();
    for entry in batch {
        let copy = publish.then(|| entry.clone());
        let push = crate::push::prepare(state, &entry.entry);
        let span = route_span(&entry);
        let members = fan_out(state, entry, routed_at).instrument(span).await;
        if let (Some(push), Some(members)) = (push, &members) {
            crate::push::offer(state, push, members);
        }
        if let (Some(entry), Some(members)) = (copy, members) {
            remote.push((entry, members));
        }
    }
    if !remote.is_empty() {
        state.port().publish(Publish::Entries(remote));
    }
}

/// The span of one entry's fan-out: its conversation and seq on every log line.
fn route_span(committed: &Committed) -> tracing::Span {
    let entry = &committed.entry;
    tracing::debug_span!("route", conversation = %entry.conversation, seq = entry.seq)
}

async fn route_inbound(state: &AppState, inbound: Inbound) {
    match inbound {
        Inbound::Entries(entries) => {
            let routed_at = Instant::now();
            for entry in entries {
                let span = route_span(&entry);
                fan_out(state, entry, routed_at).instrument(span).await;
            }
        }
        Inbound::Frame { users, frame } => offer_frame(state, &users, &frame),
        Inbound::CatchUp => {
            state.sessions().for_each(|_, _, session| session.offer(Outbound::CatchUp));
        }
    }
}

/// Offers a committed entry to this node's sessions of its members; returns the members.
async fn fan_out(
    state: &AppState,
    committed: Committed,
    routed_at: Instant,
) -> Option<Arc<Vec<UserId>>> {
    let conv = committed.entry.conversation;
    let members = match state.members().apply(&committed).await {
        Ok(members) => members,
        Err(err) => {
            // The entry is durable; members here get it on sync, and other nodes, which will
            // not hear of it from this one, catch up after the next heartbeat.
            tracing::warn!(%conv, seq = committed.entry.seq, error = %err, "cannot load members");
            state.port().report_trouble();
            return None;
        }
    };
    let entry = committed.entry;
    let (seq, committed_ms) = (entry.seq, entry.ts);
    let membership = natter_store::changes_members(&entry.body);
    if !entry.body.attachments().is_empty() {
        // Attachment URLs are signed for each reader: one frame per member.
        let mut frames: HashMap<UserId, Arc<Routed>> = HashMap::new();
        state.sessions().for_each_session(&members, |user, _, session| {
            let routed = frames.entry(user).or_insert_with(|| {
                let mut entry = entry.clone();
                state.media().sign_entries(std::slice::from_mut(&mut entry), user);
                let frame = Utf8Bytes::from(ServerFrame::Entry { entry }.to_json());
                Arc::new(Routed {
                    conversation: conv,
                    seq,
                    frame,
                    routed_at,
                    committed_ms,
                    membership,
                })
            });
            session.offer(Outbound::Entry(routed.clone()));
        });
        return Some(members);
    }
    let frame = Utf8Bytes::from(ServerFrame::Entry { entry }.to_json());
    let routed =
        Arc::new(Routed { conversation: conv, seq, frame, routed_at, committed_ms, membership });
    state.sessions().for_each_session(&members, |_, _, session| {
        session.offer(Outbound::Entry(routed.clone()));
    });
    Some(members)
}

/// Offers a ready frame (receipt, typing) to `users`' sessions on this node.
fn offer_frame(state: &AppState, users: &[UserId], frame: &Utf8Bytes) {
    state.sessions().for_each_session(users, |_, _, session| {
        session.offer(Outbound::Frame(frame.clone()));
    });
}

/// Sends a ready frame to `users`' sessions on every node.
pub(crate) fn to_users(state: &AppState, users: Vec<UserId>, frame: Utf8Bytes) {
    offer_frame(state, &users, &frame);
    state.port().to_users(users, frame);
}

//! Typing indicators: ephemeral, never stored, forwarded only to the live sessions of the
//! conversation's other members.
//!
//! Per (conversation, user): a `typing: true` is forwarded at once, then at most once per
//! `typing_throttle_ms` however often the client repeats it (each repeat only extends the
//! indicator's life). It lapses by itself `typing_ttl_ms` after the last report, and it stops
//! when the client says so or when the session that reported it ends; each of those
//! forwards one `typing: false`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use natter_cluster::SessionId;
use natter_proto::{ConversationId, ServerFrame, UserId};

use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

#[derive(Default)]
pub(crate) struct TypingHub {
    // A std mutex: each critical section is a map operation; forwards happen after it.
    typists: Mutex<HashMap<(ConversationId, UserId), Typist>>,
}

struct Typist {
    /// The session that reported it (`None` for REST), so its end stops the indicator.
    session: Option<SessionId>,
    /// The members when it started: who hears that it stopped.
    members: Arc<Vec<UserId>>,
    last_forward: Instant,
    expires: Instant,
}

impl TypingHub {
    /// # `typing` frame and `POST /v1/conversations/{id}/typing`
    pub(crate) async fn report(
        &self,
        state: &AppState,
        user: UserId,
        session: Option<SessionId>,
        conv: ConversationId,
        typing: bool,
    ) -> ApiResult<()> {
        state.rate().check(crate::rate::Action::Typing, user)?;
        let members = state.members().get(conv).await?;
        if !members.contains(&user) {
            return Err(ApiError::not_found("conversation"));
        }
        // Who hears it: not those in a block relation with the typist (nor, later, its stop).
        let shunned = state.blocks().relations(state, user).await?;
        let members = if shunned.is_empty() {
            members
        } else {
            Arc::new(members.iter().copied().filter(|m| !shunned.contains(m)).collect())
        };
        let limits = &state.cfg().limits;
        let now = Instant::now();
        let forward = {
            let mut typists = self.typists.lock().expect("typing lock poisoned");
            match (typing, typists.get_mut(&(conv, user))) {
                (true, Some(t)) => {
                    t.expires = now + limits.typing_ttl();
                    t.session = session;
                    let due = now.duration_since(t.last_forward) >= limits.typing_throttle();
                    if due {
                        t.last_forward = now;
                    }
                    due
                }
                (true, None) => {
                    let typist = Typist {
                        session,
                        members: members.clone(),
                        last_forward: now,
                        expires: now + limits.typing_ttl(),
                    };
                    typists.insert((conv, user), typist);
                    true
                }
                (false, t) => t.is_some() && typists.remove(&(conv, user)).is_some(),
            }
        };
        if forward {
            metrics::counter!("natter_typing_forwards_total").increment(1);
            send(state, conv, user, typing, &members);
        }
        Ok(())
    }

    /// Stops every indicator that `session` reported.
    pub(crate) fn session_ended(&self, state: &AppState, user: UserId, session: SessionId) {
        let stopped = self.take(|(_, u), t| *u == user && t.session == Some(session));
        for ((conv, user), t) in stopped {
            send(state, conv, user, false, &t.members);
        }
    }

    /// Stops the indicators whose clients went quiet.
    pub(crate) fn expire(&self, state: &AppState) {
        let now = Instant::now();
        for ((conv, user), t) in self.take(|_, t| t.expires <= now) {
            send(state, conv, user, false, &t.members);
        }
    }

    fn take(
        &self,
        pred: impl Fn(&(ConversationId, UserId), &Typist) -> bool,
    ) -> Vec<((ConversationId, UserId), Typist)> {
        let mut typists = self.typists.lock().expect("typing lock poisoned");
        let keys: Vec<_> = typists.iter().filter(|(k, t)| pred(k, t)).map(|(k, _)| *k).collect();
        keys.into_iter().filter_map(|k| typists.remove(&k).map(|t| (k, t))).collect()
    }
}

/// Tells the other members' sessions (never the typist's own).
fn send(state: &AppState, conv: ConversationId, user: UserId, typing: bool, members: &[UserId]) {
    let ttl_ms = typing.then_some(state.cfg().limits.typing_ttl_ms);
    let frame = ServerFrame::Typing { conversation: conv, user, typing, ttl_ms };
    let frame: tokio_tungstenite::tungstenite::Utf8Bytes = frame.to_json().into();
    let others: Vec<UserId> = members.iter().copied().filter(|m| *m != user).collect();
    crate::router::to_users(state, others, frame);
}

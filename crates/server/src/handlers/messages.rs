//! # `send`, `edit`, `delete`, `react` frames and `POST /v1/conversations/{id}/entries`

use natter_proto::{ConversationId, NewEntry, Seq, UserId};
use natter_store::{Append, NewReport, PendingAck, Range, ReportTarget};

use crate::config::Limits;
use crate::delivery::json_len;
use crate::error::{ApiError, ApiResult, check_seq};
use crate::moderation::Verdict;
use crate::rate::Action;
use crate::state::AppState;

/// Checks caps and shape before anything reaches the store.
pub(crate) fn validate(limits: &Limits, client_msg_id: &str, entry: &NewEntry) -> ApiResult<()> {
    if client_msg_id.is_empty() {
        return Err(ApiError::bad_request("client_msg_id must not be empty"));
    }
    if client_msg_id.len() > limits.max_client_msg_id_bytes {
        return Err(ApiError::too_large("client_msg_id too long"));
    }
    let target = match entry {
        NewEntry::Message { reply_to, .. } => *reply_to,
        NewEntry::Edit { target, .. }
        | NewEntry::Delete { target }
        | NewEntry::Reaction { target, .. } => Some(*target),
    };
    if let Some(seq) = target {
        check_seq("target", seq)?;
    }
    let body = match entry {
        NewEntry::Message { body, .. } | NewEntry::Edit { body, .. } => Some(body),
        NewEntry::Delete { .. } => None,
        NewEntry::Reaction { emoji, .. } => {
            if emoji.is_empty() || emoji.len() > limits.max_emoji_bytes {
                return Err(ApiError::bad_request("emoji must be 1 to max_emoji_bytes bytes"));
            }
            None
        }
    };
    if let Some(body) = body {
        if body.trim().is_empty() {
            return Err(ApiError::bad_request("body must not be empty"));
        }
        if body.len() > limits.max_body_bytes {
            return Err(ApiError::too_large("body too large"));
        }
    }
    Ok(())
}

/// Validates and queues an append behind the caller's earlier ones; await the result for the
/// ack (stage one: committed durably).
pub(crate) async fn submit(
    state: &AppState,
    sender: UserId,
    conversation: ConversationId,
    client_msg_id: String,
    entry: NewEntry,
) -> ApiResult<PendingAck> {
    state.rate().check(Action::Append, sender)?;
    validate(&state.cfg().limits, &client_msg_id, &entry)?;
    let verdict = state.content().judge(sender, conversation, &client_msg_id, &entry).await?;
    // A flagged edit files the message it edits (its state then shows the new text).
    let reported = match &entry {
        NewEntry::Edit { target, .. } => Some(*target),
        _ => None,
    };
    let append = Append { conversation, sender, client_msg_id, entry };
    let pending = state.store().submit_append(append).await?;
    match verdict {
        Verdict::Allow => Ok(pending),
        Verdict::Flag(reason) => Ok(file_after_commit(state, pending, reported, reason)),
    }
}

/// The ack of a flagged append, answered as soon as it commits; the report is filed after.
fn file_after_commit(
    state: &AppState,
    pending: PendingAck,
    reported: Option<Seq>,
    reason: String,
) -> PendingAck {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let store = state.store().clone();
    state.tasks().spawn(async move {
        let ack = match pending.wait().await {
            Ok(ack) => ack,
            Err(err) => {
                let _ = tx.send(Err(err));
                return;
            }
        };
        let _ = tx.send(Ok(ack.clone()));
        let target = ReportTarget::Message {
            conversation: ack.conversation,
            seq: reported.unwrap_or(ack.seq),
        };
        let report = NewReport { reporter: None, target, reason };
        match store.create_report(report).await {
            Ok(id) => tracing::info!(report = id, "a message was flagged for review"),
            Err(err) => tracing::warn!(error = %err, "filing a flagged message failed"),
        }
    });
    PendingAck(rx)
}

/// # `history` frame and `GET /v1/conversations/{id}/entries`
///
/// A page before or after a `seq` (or the latest page), with each message's current state,
/// of at most `max_reply_bytes` (but at least one entry): a longer page is cut at the end
/// away from its anchor (the newest entries of an `after` page, the oldest of the others),
/// with `has_more`.
pub(crate) async fn history(
    state: &AppState,
    user: UserId,
    conversation: ConversationId,
    before: Option<Seq>,
    after: Option<Seq>,
    limit: Option<u32>,
) -> ApiResult<natter_store::Page> {
    let range = match (before, after) {
        (Some(_), Some(_)) => return Err(ApiError::bad_request("give before or after, not both")),
        (Some(b), None) => Range::Before(check_seq("before", b)?),
        (None, Some(a)) => Range::After(check_seq("after", a)?),
        (None, None) => Range::Latest,
    };
    if state.store().role(user, conversation).await?.is_none() {
        return Err(ApiError::not_found("conversation"));
    }
    let limits = &state.cfg().limits;
    let mut page = state.store().entries(conversation, range, limits.page(limit)).await?;
    state.media().sign_entries(&mut page.entries, user);
    let forward = matches!(range, Range::After(_));
    if fit(&mut page.entries, limits.max_reply_bytes, forward) {
        page.has_more = true;
    }
    Ok(page)
}

/// Keeps the entries that fit in `max_bytes` of JSON (at least one), from the start when
/// `forward`, else from the end. Returns whether any were dropped.
fn fit(entries: &mut Vec<natter_proto::Entry>, max_bytes: usize, forward: bool) -> bool {
    let n = entries.len();
    let mut left = max_bytes;
    let mut fits = 0;
    for i in 0..n {
        let entry = &entries[if forward { i } else { n - 1 - i }];
        let size = json_len(entry) + 1;
        if size > left && fits > 0 {
            break;
        }
        left = left.saturating_sub(size);
        fits += 1;
    }
    if fits == n {
        return false;
    }
    if forward {
        entries.truncate(fits);
    } else {
        entries.drain(..n - fits);
    }
    true
}

//! What the SDK tells the app: [`Event`]s, read from [`Events`].

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use natter_proto::{
    Ack, ConversationId, ConversationSummary, DeviceId, Entry, ErrorBody, Invitation, Presence,
    Receipt, UserId,
};
use tokio::sync::mpsc;

/// One thing that happened, in the order it happened.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Event {
    /// The connection changed state.
    Connection(ConnectionState),
    /// A conversation's summary (kind, title, role, `last_seq`, cursors, unread count), sent
    /// by each `sync` for every conversation with something new, before its entries.
    Conversation(ConversationSummary),
    /// The next entry of a conversation: per conversation, `seq` is strictly increasing with
    /// no gap and no duplicate. Includes the app's own sends (their [`Entry::client_msg_id`]
    /// matches [`Event::Acked`]).
    Entry(Entry),
    /// A send from the outbox is stored (committed durably) with this `seq`. Reported once per
    /// send, in the order the sends were written; after an app restart, for the sends the
    /// previous run left in the outbox too.
    Acked(Ack),
    /// The server refused a send for good (not retryable); it left the outbox.
    SendFailed {
        /// The conversation it was for.
        conversation: ConversationId,
        /// Its idempotency key, as returned when it was queued.
        client_msg_id: String,
        /// Why.
        error: ErrorBody,
    },
    /// A member's `delivered` or `read` cursor moved.
    Receipt(Receipt),
    /// A member started or stopped typing. An indicator with a `ttl` lapses by itself after
    /// it unless refreshed.
    Typing {
        /// Where.
        conversation: ConversationId,
        /// Who.
        user: UserId,
        /// Started (`true`) or stopped.
        typing: bool,
        /// How long a `typing: true` holds without a refresh.
        ttl: Option<Duration>,
    },
    /// Presence of watched users ([`crate::Client::subscribe_presence`]): changes as they
    /// come, and the current state after each reconnect.
    Presence(Vec<Presence>),
    /// The user was invited to a group (live, while connected; [`crate::Api::invitations`]
    /// lists the pending ones). Accepting it ([`crate::Api::accept_invitation`]) makes them
    /// a member, and the group's entries follow.
    Invitation(Invitation),
    /// A user's profile changed (yours, or that of someone who shares a conversation with you).
    Profile(natter_proto::rest::User),
    /// The user's block list changed (on this device or another): whom they block now. An
    /// app hides these users' messages in the groups they share.
    Blocks(Vec<natter_proto::UserId>),
}

/// The connection's life cycle.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectionState {
    /// Opening a connection; `attempt` counts failed attempts since the last stable one.
    Connecting {
        /// 0 for the first attempt after a stable connection.
        attempt: u32,
    },
    /// Authenticated and caught up: every conversation is synced to the server's present,
    /// and the outbox is being delivered.
    Connected {
        /// Who the token belongs to.
        user_id: UserId,
        /// The token's device.
        device_id: DeviceId,
        /// The server's id for this session.
        session_id: Option<u64>,
    },
    /// The connection failed or dropped; the next attempt is in `retry_in`.
    Disconnected {
        /// What happened, for logs.
        reason: String,
        /// The jittered backoff delay before the next attempt.
        retry_in: Duration,
    },
    /// The client stopped for good; no more events follow.
    Closed {
        /// Why.
        reason: CloseReason,
    },
}

/// Why the client stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseReason {
    /// The app closed it (or dropped every [`crate::Client`]).
    Client,
    /// The server refused the token: log in again and start a new client (the outbox is
    /// kept in the store).
    Unauthenticated,
}

/// The app's side of the event stream: a bounded queue (see [`crate::Config::event_buffer`]),
/// also usable as a [`futures_util::Stream`].
///
/// Keep reading it. The SDK never waits for the app: calls such as [`crate::Client::send_nowait`]
/// and [`crate::Client::read`] work while events back up, so they are safe inside the loop
/// that reads events. But once the backlog is full the SDK stops reading from the server, so
/// anything that waits for the server — [`crate::Client::send`] waiting for its ack, a
/// history request — waits until the app reads on; do not await those in the event loop.
#[derive(Debug)]
pub struct Events {
    rx: mpsc::Receiver<Event>,
}

impl Events {
    pub(crate) fn new(rx: mpsc::Receiver<Event>) -> Events {
        Events { rx }
    }

    /// The next event; `None` once the client has stopped and every event was read.
    pub async fn next(&mut self) -> Option<Event> {
        self.rx.recv().await
    }

    /// The next event if one is ready.
    pub fn try_next(&mut self) -> Option<Event> {
        self.rx.try_recv().ok()
    }
}

impl futures_util::Stream for Events {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.rx.poll_recv(cx)
    }
}

//! [`Client`]: the handle the app calls. Every call is a `Command` to the background task
//! (`driver`), which owns the connection and the state; the handle itself holds nothing but
//! the channel, so it is cheap to clone and share between tasks.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use natter_proto::rest::{EntryPage, PresenceSubscribed};
use natter_proto::{
    Ack, ClientFrame, ConversationId, NewEntry, ReqId, Seq, ServerFrame, Status, UserId,
};
use tokio::sync::{Notify, mpsc, oneshot};

use crate::Config;
use crate::api::{Api, HistoryRange};
use crate::driver::Driver;
use crate::error::{Error, Result};
use crate::event::Events;

/// Commands waiting for the driver. Bounded: a burst of calls waits for the driver rather
/// than growing memory.
const COMMAND_QUEUE: usize = 256;

/// A connection to one server as one user: cheap to clone, usable from any task.
///
/// [`Client::connect`] starts a background task that connects, authenticates, resumes from
/// the stored cursors and keeps reconnecting (with backoff) until [`Client::close`]. Calls
/// made while disconnected are queued: sends in the outbox, read cursors and requests until
/// the next connection. Requests (`history`, `subscribe_presence`, `set_status`) are sent
/// again after a reconnect if their answer was lost; wrap them in a timeout if the app cannot
/// wait for a connection.
#[derive(Clone, Debug)]
pub struct Client {
    commands: mpsc::Sender<Command>,
    shared: Arc<Shared>,
    api: Api,
}

/// What the handles share with the driver besides the command queue.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    /// Set by [`Client::close`]: from then on the driver no longer waits for room in the
    /// event queue (an app closing the client may have stopped reading it), so the close
    /// cannot get stuck behind undelivered events.
    pub(crate) closing: AtomicBool,
    pub(crate) close_requested: Notify,
}

/// A send in the outbox; [`Pending::ack`] waits until the server stored it.
#[derive(Debug)]
pub struct Pending {
    client_msg_id: String,
    ack: oneshot::Receiver<Result<Ack>>,
}

impl Pending {
    /// The send's idempotency key (it appears on the stored entry and on its ack).
    pub fn client_msg_id(&self) -> &str {
        &self.client_msg_id
    }

    /// Waits for the ack. Fails with [`Error::Server`] if the server refused the send for
    /// good, and with [`Error::Closed`] if the client closed first (the send then stays in
    /// the store's outbox and the next client delivers it).
    pub async fn ack(self) -> Result<Ack> {
        self.ack.await.unwrap_or(Err(Error::Closed))
    }
}

impl Client {
    /// Loads the state from `config.store` and starts the background connection. Returns at
    /// once, connected or not: the connection's progress arrives as
    /// [`crate::Event::Connection`], and calls made before it is up are queued.
    pub async fn connect(config: Config) -> Result<(Client, Events)> {
        let api = Api::new(config.base_url.clone())?.with_token(config.token.clone());
        let store = config.store.clone();
        let snapshot = tokio::task::spawn_blocking(move || store.load())
            .await
            .map_err(|_| Error::Protocol("the state store panicked".into()))??;
        let (commands, commands_rx) = mpsc::channel(COMMAND_QUEUE);
        let (events_tx, events_rx) = mpsc::channel(config.event_buffer.max(1));
        let shared = Arc::new(Shared::default());
        let driver = Driver::new(config, snapshot, commands_rx, events_tx, shared.clone());
        tokio::spawn(driver.run());
        Ok((Client { commands, shared, api }, Events::new(events_rx)))
    }

    /// The REST API, authenticated with this client's token.
    pub fn api(&self) -> &Api {
        &self.api
    }

    /// Sends a message and waits for its ack. The message is in the outbox (and saved)
    /// before anything goes on the wire, so it survives disconnects and, with a
    /// [`crate::FileStore`], app restarts. The ack is read after the events before it: in
    /// the task that reads [`Events`], use [`Client::send_nowait`] instead.
    pub async fn send(&self, conversation: ConversationId, body: impl Into<String>) -> Result<Ack> {
        let entry = NewEntry::Message {
            body: body.into(),
            reply_to: None,
            attachments: Vec::new(),
            mentions: Vec::new(),
        };
        self.append(conversation, entry).await?.ack().await
    }

    /// Queues a message and returns its `client_msg_id` without waiting for the ack (which
    /// comes as [`crate::Event::Acked`]).
    pub async fn send_nowait(
        &self,
        conversation: ConversationId,
        body: impl Into<String>,
    ) -> Result<String> {
        let entry = NewEntry::Message {
            body: body.into(),
            reply_to: None,
            attachments: Vec::new(),
            mentions: Vec::new(),
        };
        Ok(self.append(conversation, entry).await?.client_msg_id)
    }

    /// Queues any append (message, reply, edit, deletion, reaction) in the outbox; returns
    /// once it is saved there. Sends are written in the order they were queued, and the
    /// server commits one connection's sends in that order; a send the server answers with
    /// a transient error (`unavailable`) is retried after a reconnect, so it may land after
    /// later ones unless [`Config::max_in_flight`] is 1. A send the server rate-limits
    /// (`too_many_requests`) is not an error: the outbox pauses for the `retry_after_ms` the
    /// server gave and writes it and the sends after it again, in order, on the same
    /// connection (the server holds the later ones back until the refused one is retried,
    /// so they still commit in order).
    pub async fn append(&self, conversation: ConversationId, entry: NewEntry) -> Result<Pending> {
        let (reply, rx) = oneshot::channel();
        self.command(Command::Append { conversation, entry, reply }).await?;
        rx.await.unwrap_or(Err(Error::Closed))
    }

    /// Marks everything up to `seq` read (implies delivered). Returns once queued: the
    /// cursor is sent now, or on the next connection (only the highest one per conversation).
    pub async fn read(&self, conversation: ConversationId, seq: Seq) -> Result<()> {
        self.command(Command::Read { conversation, seq }).await
    }

    /// Says the user is (or stopped) typing. Ephemeral: dropped while disconnected.
    pub async fn typing(&self, conversation: ConversationId, typing: bool) -> Result<()> {
        self.command(Command::Typing { conversation, typing }).await
    }

    /// Watches these users' presence (replacing the previous list); returns their current
    /// presence and the ids refused (no shared conversation, unknown, over the cap). Changes
    /// follow as [`crate::Event::Presence`]; the list is renewed on every reconnect.
    pub async fn subscribe_presence(&self, users: Vec<UserId>) -> Result<PresenceSubscribed> {
        match self.request(Request::SubscribePresence(users)).await? {
            ServerFrame::PresenceSubscribed { users, denied, .. } => {
                Ok(PresenceSubscribed { users, denied })
            }
            other => Err(unexpected(&other)),
        }
    }

    /// Sets this session's status (`Online` or `Away`); kept across reconnects.
    pub async fn set_status(&self, status: Status) -> Result<()> {
        match self.request(Request::SetStatus(status)).await? {
            ServerFrame::Ok { .. } => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    /// A page of a conversation's log over the WebSocket (entries carry each message's
    /// current state). The page is returned as is: it does not go through the event stream.
    pub async fn history(
        &self,
        conversation: ConversationId,
        range: HistoryRange,
        limit: Option<u32>,
    ) -> Result<EntryPage> {
        let (before, after) = range.split();
        match self.request(Request::History { conversation, before, after, limit }).await? {
            ServerFrame::History { conversation, entries, has_more, .. } => {
                Ok(EntryPage { conversation, entries, has_more })
            }
            other => Err(unexpected(&other)),
        }
    }

    /// Stops the client: reports pending `delivered` cursors if connected, saves the state,
    /// closes the connection and ends the event stream. Sends not yet acked stay in the
    /// store's outbox. Other handles fail with [`Error::Closed`] from then on.
    ///
    /// The app need not read [`Events`] for the close to finish: events that no longer fit
    /// are dropped, and what they stood for is kept for the next client (the saved cursors
    /// stay before undelivered entries; a send whose ack was not reported stays in the
    /// outbox, and the next client reports its ack).
    pub async fn close(&self) -> Result<()> {
        self.shared.closing.store(true, Ordering::Release);
        self.shared.close_requested.notify_one();
        let (done, rx) = oneshot::channel();
        if self.commands.send(Command::Close { done }).await.is_err() {
            return Ok(());
        }
        let _ = rx.await;
        Ok(())
    }

    async fn command(&self, command: Command) -> Result<()> {
        self.commands.send(command).await.map_err(|_| Error::Closed)
    }

    async fn request(&self, request: Request) -> Result<ServerFrame> {
        let (reply, rx) = oneshot::channel();
        self.command(Command::Request { request, reply }).await?;
        rx.await.unwrap_or(Err(Error::Closed))
    }
}

fn unexpected(frame: &ServerFrame) -> Error {
    Error::Protocol(format!("unexpected reply {frame:?}"))
}

/// What the app asks of the driver.
pub(crate) enum Command {
    Append {
        conversation: ConversationId,
        entry: NewEntry,
        reply: oneshot::Sender<Result<Pending>>,
    },
    Read {
        conversation: ConversationId,
        seq: Seq,
    },
    Typing {
        conversation: ConversationId,
        typing: bool,
    },
    Request {
        request: Request,
        reply: oneshot::Sender<Result<ServerFrame>>,
    },
    Close {
        done: oneshot::Sender<()>,
    },
}

/// A request with one reply, safe to send again after a reconnect.
#[derive(Debug, Clone)]
pub(crate) enum Request {
    History {
        conversation: ConversationId,
        before: Option<Seq>,
        after: Option<Seq>,
        limit: Option<u32>,
    },
    SubscribePresence(Vec<UserId>),
    SetStatus(Status),
}

impl Request {
    pub(crate) fn frame(&self, req_id: ReqId) -> ClientFrame {
        match self.clone() {
            Request::History { conversation, before, after, limit } => {
                ClientFrame::History { req_id, conversation, before, after, limit }
            }
            Request::SubscribePresence(users) => ClientFrame::SubscribePresence { req_id, users },
            Request::SetStatus(status) => ClientFrame::SetStatus { req_id: Some(req_id), status },
        }
    }
}

impl Pending {
    pub(crate) fn new(client_msg_id: String, ack: oneshot::Receiver<Result<Ack>>) -> Pending {
        Pending { client_msg_id, ack }
    }
}

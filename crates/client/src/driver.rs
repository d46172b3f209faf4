//! The background task behind a [`crate::Client`]: it owns the WebSocket (reader and writer),
//! the state (timelines, outbox, requests waiting for an answer) and the reconnect loop.
//!
//! One connection's life: open the WebSocket (bearer token on the upgrade) and wait for
//! `ready`; `sync` from the cursors, again while a conversation has `has_more`; then, caught
//! up, write the outbox in order (at most `max_in_flight` unacked), the unconfirmed read
//! cursors, the app's unanswered requests and the presence subscription. Live frames go
//! through the timelines (gap detection) into the event queue (`events`), which hands them to
//! the app as it makes room; the task itself never waits for the app. When the connection
//! drops, everything on the wire is marked unsent, and after a jittered backoff the loop
//! starts over.
//!
//! Everything is one task and one `select!`, so the state needs no lock. Order of effects:
//! an outbox addition is saved before it is written; a saved cursor never passes an entry
//! the app has not got, and a send leaves the saved outbox only once the app was told its
//! outcome (saves of those are coalesced by `persist_delay`).

mod conn;
mod events;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use natter_proto::{
    Ack, ClientFrame, ConversationId, Entry, ErrorBody, ErrorCode, ReqId, Seq, ServerFrame, Status,
    SyncConversation, UserId,
};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::Config;
use crate::client::{Command, Pending, Request, Shared};
use crate::error::{Error, Result};
use crate::event::{CloseReason, ConnectionState, Event};
use crate::outbox::Outbox;
use crate::store::{OutboxItem, Snapshot, StoreError};
use crate::timeline::{Fill, Timelines};

use conn::{Conn, Ready, Stop, append_frame, closed_by_server, connect, frame_req_id, ws_url};
use events::{EventQueue, Keep};

/// The longest a rate-limited outbox waits, whatever the server says.
const MAX_SEND_PAUSE: Duration = Duration::from_secs(60);

/// What a request written on the current connection was for.
#[derive(Debug)]
enum Sent {
    Sync,
    Fill(ConversationId),
    Append(String),
    Read(ConversationId, Seq),
    Delivered(ConversationId),
    Presence,
    Status,
    /// An app request, answered through `Driver::requests`.
    App,
}

/// An app request waiting for its answer (kept across reconnects).
struct AppRequest {
    request: Request,
    reply: oneshot::Sender<Result<ServerFrame>>,
}

/// Saves waiting to happen.
#[derive(Default)]
struct Saves {
    /// Save before anything else is written (an outbox addition).
    now: bool,
    /// Save at this time at the latest (cursor moves, acks).
    due: Option<Instant>,
    /// Appends to confirm to the app once their save is done.
    queued: Vec<(oneshot::Sender<Result<Pending>>, Pending)>,
}

pub(crate) struct Driver {
    cfg: Config,
    ws_url: String,
    commands: mpsc::Receiver<Command>,
    events: EventQueue,
    shared: Arc<Shared>,
    timelines: Timelines,
    outbox: Outbox,
    /// Whose state was loaded, and which outbox items came with it: checked against the
    /// first `ready` (a state file of another user is not resumed).
    loaded: Option<(UserId, HashSet<String>)>,
    user: Option<UserId>,
    /// Ack waiters by `client_msg_id`.
    waiters: HashMap<String, oneshot::Sender<Result<Ack>>>,
    requests: BTreeMap<ReqId, AppRequest>,
    /// Read cursors not yet confirmed by the server, the highest per conversation.
    reads: BTreeMap<ConversationId, Seq>,
    /// Conversations whose delivered cursor moved since it was last reported.
    delivered: BTreeSet<ConversationId>,
    delivered_due: Option<Instant>,
    /// The server rate-limited a send: the outbox waits until then.
    sends_paused_until: Option<Instant>,
    presence: Option<Vec<UserId>>,
    status: Status,
    next_req: ReqId,
    saves: Saves,
    closing: Option<oneshot::Sender<()>>,
}

impl Driver {
    pub(crate) fn new(
        cfg: Config,
        snapshot: Snapshot,
        commands: mpsc::Receiver<Command>,
        events: mpsc::Sender<Event>,
        shared: Arc<Shared>,
    ) -> Driver {
        let ws_url = ws_url(&cfg.base_url);
        let loaded = snapshot
            .user
            .map(|user| (user, snapshot.outbox.iter().map(|i| i.client_msg_id.clone()).collect()));
        Driver {
            ws_url,
            commands,
            events: EventQueue::new(events),
            shared,
            timelines: Timelines::new(&snapshot.cursors),
            outbox: Outbox::new(snapshot.outbox),
            loaded,
            user: snapshot.user,
            waiters: HashMap::new(),
            requests: BTreeMap::new(),
            reads: BTreeMap::new(),
            delivered: BTreeSet::new(),
            delivered_due: None,
            sends_paused_until: None,
            presence: None,
            status: Status::Online,
            next_req: 0,
            saves: Saves::default(),
            closing: None,
            cfg,
        }
    }

    pub(crate) async fn run(mut self) {
        let mut attempt = 0u32;
        let reason = loop {
            self.events.push_state(Event::Connection(ConnectionState::Connecting { attempt }));
            let stop = match self.open().await {
                Ok(conn) => {
                    let opened = conn.opened;
                    let stop = self.serve(conn).await;
                    if opened.elapsed() >= self.cfg.backoff.stable_after {
                        attempt = 0;
                    }
                    stop
                }
                Err(stop) => stop,
            };
            self.timelines.disconnected();
            self.outbox.disconnected();
            match stop {
                Stop::Closed => break CloseReason::Client,
                Stop::Unauthenticated => break CloseReason::Unauthenticated,
                Stop::Dropped(reason) => {
                    let retry_in = self.cfg.backoff.delay(attempt);
                    attempt = attempt.saturating_add(1);
                    tracing::debug!(%reason, ?retry_in, "disconnected");
                    let state = ConnectionState::Disconnected { reason, retry_in };
                    self.events.push_state(Event::Connection(state));
                    if let Err(Stop::Closed) = self.wait_offline(retry_in).await {
                        break CloseReason::Client;
                    }
                }
            }
        };
        self.shutdown(reason).await;
    }

    /// Opens a connection (handling commands meanwhile) and starts its first sync.
    async fn open(&mut self) -> Result<Conn, Stop> {
        let connect =
            connect(self.ws_url.clone(), self.cfg.token.clone(), self.cfg.connect_timeout);
        tokio::pin!(connect);
        let (ws, ready) = loop {
            self.save_now_if_needed().await;
            tokio::select! {
                res = &mut connect => break res?,
                permit = self.events.room() => self.forward(permit),
                () = at(self.saves.due) => self.save_due().await,
                cmd = self.commands.recv() => self.take_commands(cmd, None).await?,
            }
        };
        self.check_user(ready.user_id);
        let (sink, stream) = ws.split();
        let now = Instant::now();
        let mut conn = Conn {
            sink,
            stream,
            ready,
            sent: HashMap::new(),
            caught_up: false,
            opened: now,
            last_received: now,
        };
        self.send_sync(&mut conn).await?;
        Ok(conn)
    }

    /// Runs one connection until it stops; on a close by the app, says goodbye properly.
    async fn serve(&mut self, mut conn: Conn) -> Stop {
        let stop = match self.serve_until_stop(&mut conn).await {
            Ok(never) => match never {},
            Err(stop) => stop,
        };
        if let Stop::Closed = stop {
            let _ = self.flush_delivered(&mut conn).await;
            let _ = conn.flush().await;
            let frame = CloseFrame { code: CloseCode::Normal, reason: "bye".into() };
            let bye = conn.sink.send(Message::Close(Some(frame)));
            let _ = tokio::time::timeout(Duration::from_secs(1), bye).await;
        }
        // Delivered reports that were not confirmed go again on the next connection.
        for sent in conn.sent.into_values() {
            if let Sent::Delivered(conv) = sent {
                self.delivered.insert(conv);
            }
        }
        stop
    }

    async fn serve_until_stop(
        &mut self,
        conn: &mut Conn,
    ) -> Result<std::convert::Infallible, Stop> {
        let period = self.cfg.ping_interval;
        let mut ping = tokio::time::interval_at(Instant::now() + period, period);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            self.save_now_if_needed().await;
            if conn.caught_up {
                self.pump(conn).await?;
            }
            conn.flush().await?;
            // While the app's events back up, nothing more is read: the server holds (or
            // drops us as a slow consumer, and we resume later). The idle clock stops too.
            let reading = self.events.len() < self.cfg.event_buffer;
            if !reading {
                conn.last_received = Instant::now();
            }
            let idle_at = reading.then(|| conn.last_received + self.cfg.idle_timeout);
            let delivered_due = self.delivered_due.filter(|_| conn.caught_up);
            // Handing events to the app first (it never blocks: `room` is ready only when
            // the app has room), then reading: after a stall (a slow save) what the server
            // sent meanwhile is read before the idle deadline is looked at.
            tokio::select! {
                biased;
                permit = self.events.room() => self.forward(permit),
                msg = conn.stream.next(), if reading => {
                    conn.last_received = Instant::now();
                    self.message(conn, msg).await?;
                }
                cmd = self.commands.recv() => self.take_commands(cmd, Some(conn)).await?,
                () = at(delivered_due) => self.flush_delivered(conn).await?,
                () = at(self.sends_paused_until) => self.sends_paused_until = None,
                () = at(self.saves.due) => self.save_due().await,
                _ = ping.tick() => conn.send(&ClientFrame::Ping { req_id: None }).await?,
                () = at(idle_at) => {
                    return Err(Stop::Dropped("nothing received within the idle timeout".into()));
                }
            }
        }
    }

    /// The backoff pause: commands are still taken (queued for the next connection).
    async fn wait_offline(&mut self, delay: Duration) -> Result<(), Stop> {
        let until = Instant::now() + delay;
        loop {
            self.save_now_if_needed().await;
            tokio::select! {
                () = tokio::time::sleep_until(until) => return Ok(()),
                permit = self.events.room() => self.forward(permit),
                () = at(self.saves.due) => self.save_due().await,
                cmd = self.commands.recv() => self.take_commands(cmd, None).await?,
            }
        }
    }

    // --- commands ---------------------------------------------------------------------

    /// Handles `first` and whatever else is already queued (up to a batch), so that a burst
    /// of sends from several tasks costs one save.
    async fn take_commands(
        &mut self,
        first: Option<Command>,
        mut conn: Option<&mut Conn>,
    ) -> Result<(), Stop> {
        const BATCH: usize = 64;
        self.command(first, conn.as_deref_mut()).await?;
        for _ in 1..BATCH {
            let Ok(cmd) = self.commands.try_recv() else { break };
            self.command(Some(cmd), conn.as_deref_mut()).await?;
        }
        Ok(())
    }

    async fn command(&mut self, cmd: Option<Command>, conn: Option<&mut Conn>) -> Result<(), Stop> {
        let Some(cmd) = cmd else { return Err(Stop::Closed) };
        let conn = conn.filter(|c| c.caught_up);
        match cmd {
            Command::Append { conversation, entry, reply } => {
                if self.outbox.len() >= self.cfg.max_outbox {
                    let _ = reply.send(Err(Error::OutboxFull));
                    return Ok(());
                }
                let client_msg_id = uuid::Uuid::now_v7().to_string();
                let item = OutboxItem { client_msg_id: client_msg_id.clone(), conversation, entry };
                let frame = append_frame(ReqId::MAX, item.clone());
                let n_bytes = serde_json::to_string(&frame).map_or(usize::MAX, |t| t.len());
                if n_bytes > self.cfg.max_frame_bytes {
                    let _ = reply.send(Err(Error::TooLarge));
                    return Ok(());
                }
                let (ack_tx, ack_rx) = oneshot::channel();
                self.outbox.push(item);
                self.waiters.insert(client_msg_id.clone(), ack_tx);
                self.saves.now = true;
                self.saves.queued.push((reply, Pending::new(client_msg_id, ack_rx)));
            }
            Command::Read { conversation, seq } => {
                if self.reads.get(&conversation).is_some_and(|s| *s >= seq) {
                    return Ok(());
                }
                self.reads.insert(conversation, seq);
                if let Some(conn) = conn {
                    self.send_read(conn, conversation, seq).await?;
                }
            }
            Command::Typing { conversation, typing } => {
                if let Some(conn) = conn {
                    conn.send(&ClientFrame::Typing { req_id: None, conversation, typing }).await?;
                }
            }
            Command::Request { request, reply } => {
                match &request {
                    Request::SubscribePresence(users) => self.presence = Some(users.clone()),
                    Request::SetStatus(status) => self.status = *status,
                    Request::History { .. } => {}
                }
                let req_id = self.req_id();
                let frame = request.frame(req_id);
                self.requests.insert(req_id, AppRequest { request, reply });
                if let Some(conn) = conn {
                    conn.sent.insert(req_id, Sent::App);
                    conn.send(&frame).await?;
                }
            }
            Command::Close { done } => {
                self.closing = Some(done);
                return Err(Stop::Closed);
            }
        }
        Ok(())
    }

    // --- frames from the server -------------------------------------------------------

    async fn message(
        &mut self,
        conn: &mut Conn,
        msg: Option<Result<Message, tungstenite::Error>>,
    ) -> Result<(), Stop> {
        match msg {
            None => Err(Stop::Dropped("the connection closed".into())),
            Some(Err(err)) => Err(Stop::Dropped(format!("read failed: {err}"))),
            Some(Ok(Message::Text(text))) => match serde_json::from_str::<ServerFrame>(&text) {
                Ok(frame) => self.frame(conn, frame).await,
                Err(err) => {
                    tracing::warn!(error = %err, "ignoring a frame this SDK cannot parse");
                    Ok(())
                }
            },
            Some(Ok(Message::Close(frame))) => Err(closed_by_server(frame)),
            Some(Ok(_)) => Ok(()),
        }
    }

    async fn frame(&mut self, conn: &mut Conn, frame: ServerFrame) -> Result<(), Stop> {
        match frame {
            ServerFrame::Entry { entry } => self.entries(conn, vec![entry]).await?,
            ServerFrame::Synced { req_id, conversations, more } => {
                conn.sent.remove(&req_id);
                self.synced(conn, conversations, more).await?;
            }
            ServerFrame::History { req_id, conversation, entries, has_more } => {
                match conn.sent.remove(&req_id) {
                    Some(Sent::Fill(conv)) => {
                        let mut out = Vec::new();
                        let next = self.timelines.filled(conv, entries, &mut out);
                        self.deliver(out).await;
                        if let Some(fill) = next {
                            self.send_fill(conn, fill).await?;
                        }
                    }
                    Some(Sent::App) => {
                        let frame =
                            ServerFrame::History { req_id, conversation, entries, has_more };
                        self.answer(req_id, Ok(frame));
                    }
                    _ => {}
                }
            }
            ServerFrame::Ack { req_id, mut ack } => {
                if let Some(Sent::Append(id)) = conn.sent.remove(&req_id) {
                    ack.client_msg_id.get_or_insert(id);
                }
                self.acked(ack).await;
            }
            ServerFrame::Receipt { receipt } => {
                self.events.push(Event::Receipt(receipt), Keep::Nothing);
            }
            ServerFrame::Typing { conversation, user, typing, ttl_ms } => {
                let ttl = ttl_ms.map(Duration::from_millis);
                self.events.push(Event::Typing { conversation, user, typing, ttl }, Keep::Nothing);
            }
            ServerFrame::PresenceSubscribed { req_id, users, denied } => {
                match conn.sent.remove(&req_id) {
                    Some(Sent::Presence) => {
                        self.events.push(Event::Presence(users), Keep::Nothing);
                    }
                    Some(Sent::App) => {
                        let frame = ServerFrame::PresenceSubscribed { req_id, users, denied };
                        self.answer(req_id, Ok(frame));
                    }
                    _ => {}
                }
            }
            ServerFrame::Presence { users } => {
                self.events.push(Event::Presence(users), Keep::Nothing);
            }
            ServerFrame::Invitation { invitation } => {
                self.events.push(Event::Invitation(invitation), Keep::Nothing);
            }
            ServerFrame::Profile { user } => {
                self.events.push(Event::Profile(user), Keep::Nothing);
            }
            ServerFrame::Blocks { blocked } => {
                self.events.push(Event::Blocks(blocked), Keep::Nothing);
            }
            ServerFrame::Ok { req_id } => match conn.sent.remove(&req_id) {
                Some(Sent::Read(conv, seq)) => self.read_done(conv, seq),
                Some(Sent::App) => self.answer(req_id, Ok(ServerFrame::Ok { req_id })),
                _ => {}
            },
            ServerFrame::Error { req_id, error } => self.error(conn, req_id, error).await?,
            ServerFrame::Ready { .. } | ServerFrame::Pong { .. } => {}
        }
        Ok(())
    }

    /// A sync reply. The server bounds each reply (`more`: it stopped at its budget, with
    /// conversations cut short or not reached): sync again from the new cursors until a reply
    /// has nothing more.
    async fn synced(
        &mut self,
        conn: &mut Conn,
        convs: Vec<SyncConversation>,
        mut more: bool,
    ) -> Result<(), Stop> {
        for sc in convs {
            more |= sc.has_more;
            self.events.push(Event::Conversation(sc.conversation), Keep::Nothing);
            self.entries(conn, sc.entries).await?;
        }
        if more {
            return self.send_sync(conn).await;
        }
        if !conn.caught_up {
            conn.caught_up = true;
            self.caught_up(conn).await?;
        }
        Ok(())
    }

    /// Entries from the server (live or a sync page) through gap detection to the app.
    async fn entries(&mut self, conn: &mut Conn, entries: Vec<Entry>) -> Result<(), Stop> {
        let mut out = Vec::new();
        for entry in entries {
            if let Some(fill) = self.timelines.accept(entry, &mut out) {
                self.send_fill(conn, fill).await?;
            }
        }
        self.deliver(out).await;
        Ok(())
    }

    async fn deliver(&mut self, entries: Vec<Entry>) {
        if entries.is_empty() {
            return;
        }
        for entry in entries {
            let keep = Keep::Entry(entry.conversation, entry.seq);
            self.events.push(Event::Entry(entry), keep);
        }
    }

    /// Reports acks in the order the sends were written (see `outbox`).
    async fn acked(&mut self, ack: Ack) {
        let done = self.outbox.acked(ack);
        self.report_acks(done).await;
    }

    async fn report_acks(&mut self, done: Vec<(OutboxItem, Ack)>) {
        if done.is_empty() {
            return;
        }
        // Saved lazily: if the app stops before the save, the sends are retried and
        // answered with the same acks.
        self.save_later();
        for (item, ack) in done {
            let waiter = self.waiters.remove(&item.client_msg_id);
            let told = waiter.is_some_and(|w| w.send(Ok(ack.clone())).is_ok());
            let keep = if told { Keep::Nothing } else { Keep::Send(item) };
            self.events.push(Event::Acked(ack), keep);
        }
    }

    async fn error(
        &mut self,
        conn: &mut Conn,
        req_id: Option<ReqId>,
        error: ErrorBody,
    ) -> Result<(), Stop> {
        let sent = req_id.and_then(|id| conn.sent.remove(&id));
        let retry = error.code.retryable();
        match sent {
            Some(Sent::Append(client_msg_id)) if error.code == ErrorCode::TooManyRequests => {
                // Slow down, keep the connection: this send and the ones after it go again,
                // in order, once the server says a token is back.
                let wait = Duration::from_millis(error.retry_after_ms.unwrap_or(1_000));
                let until = Instant::now() + wait.min(MAX_SEND_PAUSE);
                self.sends_paused_until =
                    Some(self.sends_paused_until.map_or(until, |u| u.max(until)));
                self.outbox.throttled(&client_msg_id);
            }
            Some(Sent::Append(_) | Sent::Sync) if retry => {
                return Err(Stop::Dropped(format!("server busy: {}", error.message)));
            }
            Some(Sent::Append(client_msg_id)) => {
                let (item, done) = self.outbox.refused(&client_msg_id);
                if let Some(item) = item {
                    self.save_later();
                    let failed = Event::SendFailed {
                        conversation: item.conversation,
                        client_msg_id: client_msg_id.clone(),
                        error: error.clone(),
                    };
                    let waiter = self.waiters.remove(&client_msg_id);
                    let told = waiter.is_some_and(|w| w.send(Err(Error::Server(error))).is_ok());
                    let keep = if told { Keep::Nothing } else { Keep::Send(item) };
                    self.events.push(failed, keep);
                }
                self.report_acks(done).await;
            }
            Some(Sent::Sync) => {
                return Err(Stop::Dropped(format!("sync failed: {}", error.message)));
            }
            Some(Sent::Fill(_)) if retry => {
                return Err(Stop::Dropped(format!("server busy: {}", error.message)));
            }
            Some(Sent::Fill(conv)) => {
                tracing::warn!(%conv, code = ?error.code, "gap fill refused; skipping the gap");
                let mut out = Vec::new();
                self.timelines.fill_failed(conv, &mut out);
                self.deliver(out).await;
            }
            Some(Sent::Read(conv, seq)) => {
                if !retry {
                    self.read_done(conv, seq);
                }
            }
            Some(Sent::App) => {
                let req_id = req_id.expect("an app request has a req_id");
                self.answer(req_id, Err(Error::Server(error)));
            }
            Some(sent @ (Sent::Delivered(_) | Sent::Presence | Sent::Status)) => {
                tracing::debug!(?sent, code = ?error.code, "request refused");
            }
            None => tracing::warn!(code = ?error.code, message = %error.message, "server error"),
        }
        Ok(())
    }

    /// The first sync round is done: report the connection and write everything queued.
    async fn caught_up(&mut self, conn: &mut Conn) -> Result<(), Stop> {
        let Ready { user_id, device_id, session_id } = conn.ready;
        let connected = ConnectionState::Connected { user_id, device_id, session_id };
        self.events.push_state(Event::Connection(connected));
        let mut presence_asked = false;
        let mut status_asked = false;
        let frames: Vec<ClientFrame> = self
            .requests
            .iter()
            .map(|(req_id, r)| {
                presence_asked |= matches!(r.request, Request::SubscribePresence(_));
                status_asked |= matches!(r.request, Request::SetStatus(_));
                r.request.frame(*req_id)
            })
            .collect();
        for frame in frames {
            if let Some(req_id) = frame_req_id(&frame) {
                conn.sent.insert(req_id, Sent::App);
            }
            conn.send(&frame).await?;
        }
        if let (Some(users), false) = (self.presence.clone(), presence_asked) {
            let req_id = self.req_id();
            conn.sent.insert(req_id, Sent::Presence);
            conn.send(&ClientFrame::SubscribePresence { req_id, users }).await?;
        }
        if self.status != Status::Online && !status_asked {
            let req_id = self.req_id();
            conn.sent.insert(req_id, Sent::Status);
            conn.send(&ClientFrame::SetStatus { req_id: Some(req_id), status: self.status })
                .await?;
        }
        let reads: Vec<_> = self.reads.iter().map(|(c, s)| (*c, *s)).collect();
        for (conv, seq) in reads {
            self.send_read(conn, conv, seq).await?;
        }
        if !self.delivered.is_empty() {
            self.delivered_due = Some(Instant::now());
        }
        Ok(())
    }

    // --- writing --------------------------------------------------------------------

    async fn send_sync(&mut self, conn: &mut Conn) -> Result<(), Stop> {
        let req_id = self.req_id();
        conn.sent.insert(req_id, Sent::Sync);
        let cursors = self.timelines.cursors();
        conn.send(&ClientFrame::Sync { req_id, cursors, limit: self.cfg.sync_limit }).await
    }

    async fn send_fill(&mut self, conn: &mut Conn, fill: Fill) -> Result<(), Stop> {
        let req_id = self.req_id();
        conn.sent.insert(req_id, Sent::Fill(fill.conversation));
        tracing::debug!(conv = %fill.conversation, after = fill.after, limit = fill.limit, "filling a gap");
        conn.send(&ClientFrame::History {
            req_id,
            conversation: fill.conversation,
            before: None,
            after: Some(fill.after),
            limit: Some(fill.limit),
        })
        .await
    }

    async fn send_read(
        &mut self,
        conn: &mut Conn,
        conv: ConversationId,
        seq: Seq,
    ) -> Result<(), Stop> {
        let req_id = self.req_id();
        conn.sent.insert(req_id, Sent::Read(conv, seq));
        conn.send(&ClientFrame::Read { req_id: Some(req_id), conversation: conv, seq }).await
    }

    fn read_done(&mut self, conv: ConversationId, seq: Seq) {
        if self.reads.get(&conv).is_some_and(|s| *s <= seq) {
            self.reads.remove(&conv);
        }
    }

    /// Writes outbox items, in order, while fewer than `max_in_flight` await their ack.
    async fn pump(&mut self, conn: &mut Conn) -> Result<(), Stop> {
        if self.sends_paused_until.is_some() {
            return Ok(());
        }
        while let Some(item) = self.outbox.next_to_send(self.cfg.max_in_flight) {
            let item = item.clone();
            let req_id = self.req_id();
            conn.sent.insert(req_id, Sent::Append(item.client_msg_id.clone()));
            conn.send(&append_frame(req_id, item)).await?;
        }
        Ok(())
    }

    async fn flush_delivered(&mut self, conn: &mut Conn) -> Result<(), Stop> {
        self.delivered_due = None;
        let convs = std::mem::take(&mut self.delivered);
        let cursors = self.app_cursors();
        for conv in convs {
            let Some(&seq) = cursors.get(&conv) else { continue };
            let req_id = self.req_id();
            conn.sent.insert(req_id, Sent::Delivered(conv));
            conn.send(&ClientFrame::Delivered { req_id: Some(req_id), conversation: conv, seq })
                .await?;
        }
        Ok(())
    }

    // --- state ----------------------------------------------------------------------

    /// The first `ready` tells whose token this is; a loaded state of another user is
    /// dropped (its cursors and its sends), never resumed as this one.
    fn check_user(&mut self, user: UserId) {
        if let Some((loaded_user, loaded_ids)) = self.loaded.take()
            && loaded_user != user
        {
            tracing::warn!(%loaded_user, %user, "stored state belongs to another user; discarding it");
            self.timelines.clear();
            for item in self.outbox.clear() {
                if !loaded_ids.contains(&item.client_msg_id) {
                    self.outbox.push(item);
                }
            }
            self.saves.now = true;
        }
        if self.user != Some(user) {
            self.user = Some(user);
            self.save_later();
        }
    }

    /// The cursors of what the app has got: the timelines' less what still waits in the
    /// event queue.
    fn app_cursors(&self) -> BTreeMap<ConversationId, Seq> {
        let mut cursors = self.timelines.cursors();
        self.events.keep_cursors(&mut cursors);
        cursors
    }

    fn snapshot(&self) -> Snapshot {
        let mut outbox = self.outbox.items();
        self.events.keep_sends(&mut outbox);
        Snapshot { user: self.user, cursors: self.app_cursors(), outbox }
    }

    fn save_later(&mut self) {
        if self.saves.due.is_none() {
            self.saves.due = Some(Instant::now() + self.cfg.persist_delay);
        }
    }

    async fn save(&mut self) -> Result<(), StoreError> {
        self.saves.now = false;
        self.saves.due = None;
        let store = self.cfg.store.clone();
        let snapshot = self.snapshot();
        let res = tokio::task::spawn_blocking(move || store.save(&snapshot))
            .await
            .unwrap_or_else(|_| Err(StoreError::Other("the state store panicked".into())));
        if let Err(err) = &res {
            tracing::warn!(error = %error_chain(err), "saving the client state failed");
        }
        res
    }

    async fn save_due(&mut self) {
        // A failure is logged; the next change tries again.
        let _ = self.save().await;
    }

    /// Saves outbox additions, then tells the app they are queued (or takes them back if
    /// the save failed, so that the app never believes an unsaved send is safe).
    async fn save_now_if_needed(&mut self) {
        if !self.saves.now {
            return;
        }
        let res = self.save().await;
        for (reply, pending) in std::mem::take(&mut self.saves.queued) {
            match &res {
                Ok(()) => {
                    let _ = reply.send(Ok(pending));
                }
                Err(err) => {
                    let id = pending.client_msg_id().to_owned();
                    self.outbox.pop_unsent(&id);
                    self.waiters.remove(&id);
                    let _ = reply.send(Err(Error::Store(StoreError::Other(error_chain(err)))));
                }
            }
        }
    }

    fn answer(&mut self, req_id: ReqId, res: Result<ServerFrame>) {
        if let Some(r) = self.requests.remove(&req_id) {
            let _ = r.reply.send(res);
        }
    }

    fn req_id(&mut self) -> ReqId {
        self.next_req += 1;
        self.next_req
    }

    /// The app made room for events: forward them, and report the delivered cursors of the
    /// entries it got (soon, coalesced).
    fn forward(&mut self, permit: Option<mpsc::OwnedPermit<Event>>) {
        let delivered = self.events.forward(permit);
        if delivered.is_empty() {
            return;
        }
        self.delivered.extend(delivered);
        // The saved cursors may move now that the app has the entries.
        self.save_later();
        if self.delivered_due.is_none() {
            self.delivered_due = Some(Instant::now() + self.cfg.delivered_delay);
        }
    }

    async fn shutdown(mut self, reason: CloseReason) {
        // Appends queued just before the close are saved (and so confirmed) first.
        self.saves.now = true;
        self.save_now_if_needed().await;
        self.events.push_state(Event::Connection(ConnectionState::Closed { reason }));
        self.events.flush(&self.shared).await;
        // Saved after the hand-over: what the app did not get is kept for the next client.
        self.save_due().await;
        for (_, r) in std::mem::take(&mut self.requests) {
            let _ = r.reply.send(Err(Error::Closed));
        }
        for (_, waiter) in std::mem::take(&mut self.waiters) {
            let _ = waiter.send(Err(Error::Closed));
        }
        if let Some(done) = self.closing.take() {
            let _ = done.send(());
        }
    }
}

/// Waits until `deadline`, or forever without one (a disabled `select!` branch).
async fn at(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(err) = source {
        text.push_str(": ");
        text.push_str(&err.to_string());
        source = err.source();
    }
    text
}

//! Events on their way to the app. The driver never waits for the app: it queues events here
//! and forwards them as the app makes room, so commands (sends, reads, close) are handled
//! even while the app is busy. The queue's length gates reading from the server instead
//! (backpressure), which keeps it bounded.
//!
//! Until an event is in the app's channel, what it stands for is not taken for done: an
//! entry still here keeps the saved cursor before it, and an ack still here keeps its send
//! in the saved outbox (the next client sends it again and reports the same ack).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::Ordering;

use natter_proto::{ConversationId, Seq};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::mpsc::{self, OwnedPermit};

use crate::client::Shared;
use crate::event::Event;
use crate::store::OutboxItem;

/// What an event stands for, to keep if it never reaches the app.
#[derive(Debug)]
pub(super) enum Keep {
    Nothing,
    /// The entry `seq` of a conversation: the saved cursor stays before it.
    Entry(ConversationId, Seq),
    /// The outcome of a send: the send stays in the saved outbox.
    Send(OutboxItem),
}

pub(super) struct EventQueue {
    /// `None` once the app dropped its [`crate::Events`]: events are then dropped at once
    /// and count as told.
    tx: Option<mpsc::Sender<Event>>,
    queue: VecDeque<(Event, Keep)>,
}

impl EventQueue {
    pub(super) fn new(tx: mpsc::Sender<Event>) -> EventQueue {
        EventQueue { tx: Some(tx), queue: VecDeque::new() }
    }

    pub(super) fn len(&self) -> usize {
        self.queue.len()
    }

    pub(super) fn push(&mut self, event: Event, keep: Keep) {
        if self.tx.is_some() {
            self.queue.push_back((event, keep));
        }
    }

    /// A connection state replaces one still queued (the app needs the latest state, and a
    /// long outage must not pile up one event per attempt).
    pub(super) fn push_state(&mut self, event: Event) {
        if let Some((Event::Connection(_), _)) = self.queue.back() {
            self.queue.pop_back();
        }
        self.push(event, Keep::Nothing);
    }

    /// Waits for room in the app's channel while something is queued (forever otherwise):
    /// a `select!` branch. `None`: the app dropped its event stream.
    pub(super) fn room(&self) -> impl Future<Output = Option<OwnedPermit<Event>>> + 'static {
        let tx = self.tx.clone().filter(|_| !self.queue.is_empty());
        async move {
            match tx {
                Some(tx) => tx.reserve_owned().await.ok(),
                None => std::future::pending().await,
            }
        }
    }

    /// Forwards the first queued event with `permit`, then as many more as fit at once.
    /// Returns the conversations whose entries reached the app (their delivered cursors).
    pub(super) fn forward(
        &mut self,
        permit: Option<OwnedPermit<Event>>,
    ) -> BTreeSet<ConversationId> {
        let mut delivered = BTreeSet::new();
        let Some(permit) = permit else {
            // The app stopped listening: everything counts as told.
            self.tx = None;
            delivered.extend(self.queue.drain(..).filter_map(|(_, keep)| match keep {
                Keep::Entry(conv, _) => Some(conv),
                _ => None,
            }));
            return delivered;
        };
        // Only the driver sends on this channel, so room seen here stays there.
        let mut permit = Some(permit);
        while let Some(tx) = &self.tx {
            if self.queue.is_empty() || (permit.is_none() && tx.capacity() == 0) {
                break;
            }
            let (event, keep) = self.queue.pop_front().expect("a queued event");
            if let Keep::Entry(conv, _) = keep {
                delivered.insert(conv);
            }
            match permit.take() {
                Some(permit) => {
                    permit.send(event);
                }
                // Fails only if the app dropped its stream meanwhile: then it counts as told.
                None => {
                    let _ = tx.try_send(event);
                }
            }
        }
        delivered
    }

    /// At shutdown: hands over what is queued, waiting for room unless the app is closing
    /// the client (then it may not be reading any more, and what does not fit stays here,
    /// accounted for by `keep_cursors` and `keep_sends`).
    pub(super) async fn flush(&mut self, shared: &Shared) {
        while !self.queue.is_empty() {
            let Some(tx) = self.tx.clone() else { return };
            let permit = if shared.closing.load(Ordering::Acquire) {
                match tx.try_reserve_owned() {
                    Ok(permit) => Some(permit),
                    Err(TrySendError::Full(_)) => return,
                    Err(TrySendError::Closed(_)) => None,
                }
            } else {
                tokio::select! {
                    permit = tx.reserve_owned() => permit.ok(),
                    () = shared.close_requested.notified() => continue,
                }
            };
            self.forward(permit);
        }
    }

    /// Moves cursors back before the entries still queued here (the app has not got them).
    pub(super) fn keep_cursors(&self, cursors: &mut BTreeMap<ConversationId, Seq>) {
        for (_, keep) in &self.queue {
            if let Keep::Entry(conv, seq) = keep {
                let before = seq.saturating_sub(1);
                let cursor = cursors.entry(*conv).or_insert(before);
                *cursor = (*cursor).min(before);
            }
        }
    }

    /// Puts back into the outbox the sends whose outcome is still queued here. They were
    /// answered before everything still in the outbox, so they go first.
    pub(super) fn keep_sends(&self, outbox: &mut Vec<OutboxItem>) {
        let mut unreported: Vec<OutboxItem> = self
            .queue
            .iter()
            .filter_map(|(_, keep)| match keep {
                Keep::Send(item) => Some(item.clone()),
                _ => None,
            })
            .collect();
        if !unreported.is_empty() {
            unreported.append(outbox);
            *outbox = unreported;
        }
    }
}

#[cfg(test)]
mod tests {
    use natter_proto::{EntryBody, NewEntry, UserId};

    use super::*;
    use crate::event::ConnectionState;

    const C: ConversationId = ConversationId(3);

    fn entry(seq: Seq) -> Event {
        Event::Entry(natter_proto::Entry {
            conversation: C,
            seq,
            id: format!("e{seq}"),
            sender: UserId(1),
            ts: 0,
            client_msg_id: None,
            body: EntryBody::Message {
                body: "m".into(),
                reply_to: None,
                attachments: Vec::new(),
                mentions: Vec::new(),
            },
            state: None,
        })
    }

    fn item(id: &str) -> OutboxItem {
        OutboxItem {
            client_msg_id: id.into(),
            conversation: C,
            entry: NewEntry::Message {
                body: id.into(),
                reply_to: None,
                attachments: Vec::new(),
                mentions: Vec::new(),
            },
        }
    }

    #[test]
    fn what_the_app_did_not_get_is_kept() {
        let (tx, mut rx) = mpsc::channel(1);
        let mut q = EventQueue::new(tx.clone());
        for seq in [7, 8, 9] {
            q.push(entry(seq), Keep::Entry(C, seq));
        }
        q.push(
            Event::Connection(ConnectionState::Connecting { attempt: 0 }),
            Keep::Send(item("a")),
        );
        let delivered = q.forward(tx.clone().try_reserve_owned().ok());
        assert_eq!(delivered, [C].into());
        assert_eq!(q.len(), 3, "one fit in the channel");

        let mut cursors = [(C, 9)].into();
        q.keep_cursors(&mut cursors);
        assert_eq!(cursors, [(C, 7)].into(), "the app has 7, not 8 and 9");
        let mut outbox = vec![item("b")];
        q.keep_sends(&mut outbox);
        assert_eq!(outbox, vec![item("a"), item("b")]);

        assert!(matches!(rx.try_recv(), Ok(Event::Entry(e)) if e.seq == 7));
        q.forward(tx.clone().try_reserve_owned().ok());
        assert!(matches!(rx.try_recv(), Ok(Event::Entry(e)) if e.seq == 8));

        // The app drops its stream: everything counts as told.
        drop(rx);
        let delivered = q.forward(None);
        assert_eq!((delivered, q.len()), ([C].into(), 0));
        q.push(entry(10), Keep::Entry(C, 10));
        assert_eq!(q.len(), 0);
    }

    #[test]
    fn connection_states_replace_each_other_while_queued() {
        let (tx, _rx) = mpsc::channel(1);
        let mut q = EventQueue::new(tx);
        for attempt in 0..100 {
            q.push_state(Event::Connection(ConnectionState::Connecting { attempt }));
        }
        assert_eq!(q.len(), 1);
        q.push(entry(1), Keep::Entry(C, 1));
        q.push_state(Event::Connection(ConnectionState::Connecting { attempt: 0 }));
        assert_eq!(q.len(), 3);
    }
}

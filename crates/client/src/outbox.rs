//! The outbox: sends not yet acked, in the order the app wrote them, and which of them are on
//! the wire of the current connection. Pure state; the driver saves it and writes the frames.
//!
//! Sends go out strictly in order, so the ones on the wire are always a prefix of the queue
//! (`n_sent`). A reconnect marks everything unsent and the whole queue is written again:
//! the server answers a `client_msg_id` it already stored with the original ack.
//!
//! The server may answer one connection's sends out of order (each ack is sent when its
//! commit batch is done). Acks are released in the written order: an ack that overtook an
//! earlier send's is held on its item until everything before it is answered.

use std::collections::VecDeque;

use natter_proto::Ack;

use crate::store::OutboxItem;

#[derive(Debug, Default)]
pub(crate) struct Outbox {
    items: VecDeque<Slot>,
    /// The first `n_sent` items were written on the current connection.
    n_sent: usize,
}

#[derive(Debug)]
struct Slot {
    item: OutboxItem,
    /// Acked, waiting for the items before it.
    ack: Option<Ack>,
}

impl Outbox {
    pub(crate) fn new(items: Vec<OutboxItem>) -> Outbox {
        Outbox {
            items: items.into_iter().map(|item| Slot { item, ack: None }).collect(),
            n_sent: 0,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.items.len()
    }

    pub(crate) fn items(&self) -> Vec<OutboxItem> {
        self.items.iter().map(|s| s.item.clone()).collect()
    }

    pub(crate) fn push(&mut self, item: OutboxItem) {
        self.items.push_back(Slot { item, ack: None });
    }

    /// The next item to write, if fewer than `window` are awaiting their ack; it counts as
    /// sent from now on.
    pub(crate) fn next_to_send(&mut self, window: usize) -> Option<&OutboxItem> {
        if self.n_sent >= window.max(1) || self.n_sent >= self.items.len() {
            return None;
        }
        self.n_sent += 1;
        self.items.get(self.n_sent - 1).map(|s| &s.item)
    }

    /// Records an ack; returns the items (with their acks) that are now answered in the
    /// written order, removed from the outbox. An unknown or repeated ack changes nothing.
    pub(crate) fn acked(&mut self, ack: Ack) -> Vec<(OutboxItem, Ack)> {
        let Some(id) = ack.client_msg_id.as_deref() else { return Vec::new() };
        if let Some(slot) = self.items.iter_mut().find(|s| s.item.client_msg_id == id) {
            slot.ack.get_or_insert(ack);
        }
        self.release()
    }

    /// Removes a refused item; returns the acked items it was holding back.
    pub(crate) fn refused(
        &mut self,
        client_msg_id: &str,
    ) -> (Option<OutboxItem>, Vec<(OutboxItem, Ack)>) {
        let Some(at) = self.items.iter().position(|s| s.item.client_msg_id == client_msg_id) else {
            return (None, Vec::new());
        };
        if at < self.n_sent {
            self.n_sent -= 1;
        }
        let item = self.items.remove(at).map(|s| s.item);
        (item, self.release())
    }

    fn release(&mut self) -> Vec<(OutboxItem, Ack)> {
        let mut done = Vec::new();
        while self.items.front().is_some_and(|s| s.ack.is_some()) {
            let slot = self.items.pop_front().expect("a front item");
            self.n_sent = self.n_sent.saturating_sub(1);
            done.push((slot.item, slot.ack.expect("an acked item")));
        }
        done
    }

    /// The server refused `client_msg_id` for now (rate limited): it and every item after it
    /// are written again later, in order (those already stored are answered with their
    /// original acks).
    pub(crate) fn throttled(&mut self, client_msg_id: &str) {
        if let Some(at) = self.items.iter().position(|s| s.item.client_msg_id == client_msg_id) {
            self.n_sent = self.n_sent.min(at);
        }
    }

    /// Removes the last item (its save failed, so the app was told it is not queued).
    pub(crate) fn pop_unsent(&mut self, client_msg_id: &str) -> Option<OutboxItem> {
        let at = self.items.iter().rposition(|s| s.item.client_msg_id == client_msg_id)?;
        if at < self.n_sent {
            return None;
        }
        self.items.remove(at).map(|s| s.item)
    }

    /// The connection dropped: nothing is on the wire any more.
    pub(crate) fn disconnected(&mut self) {
        self.n_sent = 0;
    }

    /// Drops everything (the stored state belonged to another user).
    pub(crate) fn clear(&mut self) -> Vec<OutboxItem> {
        self.n_sent = 0;
        self.items.drain(..).map(|s| s.item).collect()
    }
}

#[cfg(test)]
mod tests {
    use natter_proto::{ConversationId, NewEntry};

    use super::*;

    fn item(id: &str) -> OutboxItem {
        OutboxItem {
            client_msg_id: id.to_owned(),
            conversation: ConversationId(1),
            entry: NewEntry::Message {
                body: id.to_owned(),
                reply_to: None,
                attachments: Vec::new(),
                mentions: Vec::new(),
            },
        }
    }

    fn ack(id: &str, seq: u64) -> Ack {
        Ack {
            conversation: ConversationId(1),
            seq,
            id: format!("e{seq}"),
            ts: 0,
            client_msg_id: Some(id.to_owned()),
        }
    }

    fn send_all(o: &mut Outbox, window: usize) -> Vec<String> {
        std::iter::from_fn(|| o.next_to_send(window).map(|i| i.client_msg_id.clone())).collect()
    }

    fn ids(done: Vec<(OutboxItem, Ack)>) -> Vec<String> {
        done.into_iter().map(|(i, _)| i.client_msg_id).collect()
    }

    #[test]
    fn sends_in_order_within_the_window_and_resends_after_a_drop() {
        let mut o = Outbox::new(vec![item("a"), item("b")]);
        o.push(item("c"));
        o.push(item("d"));
        assert_eq!(send_all(&mut o, 2), ["a", "b"]);
        assert_eq!(ids(o.acked(ack("a", 1))), ["a"]);
        assert_eq!(send_all(&mut o, 2), ["c"]);
        assert_eq!(ids(o.acked(ack("a", 1))), Vec::<String>::new(), "a repeated ack");
        o.disconnected();
        assert_eq!(send_all(&mut o, 10), ["b", "c", "d"]);
        assert_eq!(o.len(), 3);
        assert_eq!(o.items(), vec![item("b"), item("c"), item("d")]);
    }

    #[test]
    fn acks_are_released_in_the_written_order() {
        let mut o = Outbox::new(vec![item("a"), item("b"), item("c"), item("d")]);
        assert_eq!(send_all(&mut o, 3), ["a", "b", "c"]);
        assert_eq!(ids(o.acked(ack("c", 3))), Vec::<String>::new(), "c waits for a and b");
        assert_eq!(ids(o.acked(ack("a", 1))), ["a"]);
        // A held item keeps its window slot until released.
        assert_eq!(send_all(&mut o, 3), ["d"]);
        // A refusal of b releases c behind it.
        let (refused, done) = o.refused("b");
        assert_eq!(refused, Some(item("b")));
        assert_eq!(ids(done), ["c"]);
        assert_eq!(ids(o.acked(ack("d", 4))), ["d"]);
        assert_eq!(o.len(), 0);
        assert_eq!(send_all(&mut o, 3), Vec::<String>::new());
    }

    #[test]
    fn a_held_ack_survives_a_drop() {
        let mut o = Outbox::new(vec![item("a"), item("b")]);
        assert_eq!(send_all(&mut o, 5), ["a", "b"]);
        assert!(o.acked(ack("b", 2)).is_empty());
        o.disconnected();
        assert_eq!(send_all(&mut o, 5), ["a", "b"]);
        let done = o.acked(ack("a", 1));
        let seqs: Vec<u64> = done.iter().map(|(_, a)| a.seq).collect();
        assert_eq!(seqs, [1, 2]);
    }

    #[test]
    fn only_an_unsent_item_can_be_taken_back() {
        let mut o = Outbox::new(vec![item("a")]);
        o.push(item("b"));
        assert_eq!(send_all(&mut o, 1), ["a"]);
        assert_eq!(o.pop_unsent("a"), None);
        assert_eq!(o.pop_unsent("b"), Some(item("b")));
        assert_eq!(o.clear(), vec![item("a")]);
    }

    #[test]
    fn a_throttled_item_and_those_after_it_go_again_in_order() {
        let mut o = Outbox::new(vec![item("a"), item("b"), item("c"), item("d")]);
        assert_eq!(send_all(&mut o, 5), ["a", "b", "c", "d"]);
        o.throttled("c");
        // A later refusal of an item after it changes nothing more.
        o.throttled("d");
        assert!(o.acked(ack("b", 2)).is_empty());
        assert_eq!(send_all(&mut o, 5), ["c", "d"]);
        assert_eq!(ids(o.acked(ack("a", 1))), ["a", "b"]);
        o.throttled("unknown");
        assert_eq!(send_all(&mut o, 5), Vec::<String>::new());
    }
}

//! Gap detection: keeps each conversation a contiguous run of `seq` on its way to the app.
//!
//! Every entry the driver reads (live, from `sync`, from a gap fill) goes through
//! [`Timelines::accept`]. The next `seq` is handed on at once; an older one is a duplicate
//! and dropped; a later one means entries are missing: it is held, and the driver is asked to
//! fetch the gap with a `history` request ([`Fill`]). When the page arrives
//! ([`Timelines::filled`]) the gap's entries go out, then the held ones. Pure state, no I/O.

use std::collections::{BTreeMap, HashMap};

use natter_proto::{ConversationId, Entry, Seq};

/// Most entries held behind one gap. Later ones are not kept but remembered (`target`), and
/// fetched by the fill like the gap itself, so memory stays bounded whatever the server does.
const HELD_CAP: usize = 1024;
/// Most entries one fill asks for (the server's default page cap).
const MAX_FILL: Seq = 500;

/// Fetch `conversation`'s entries after `after`, at most `limit` of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Fill {
    pub(crate) conversation: ConversationId,
    pub(crate) after: Seq,
    pub(crate) limit: u32,
}

#[derive(Debug, Default)]
pub(crate) struct Timelines {
    convs: HashMap<ConversationId, Timeline>,
}

#[derive(Debug, Default)]
struct Timeline {
    /// The last seq handed to the app; `None` until the first entry, which starts it.
    cursor: Option<Seq>,
    /// Entries after a gap, waiting for it to be filled.
    held: BTreeMap<Seq, Entry>,
    /// The highest seq known to exist (held, or seen while `held` was full).
    target: Seq,
    /// A fill for this conversation is in flight.
    filling: bool,
}

impl Timelines {
    /// Starts from stored cursors.
    pub(crate) fn new(cursors: &BTreeMap<ConversationId, Seq>) -> Timelines {
        let convs = cursors
            .iter()
            .map(|(c, s)| (*c, Timeline { cursor: Some(*s), target: *s, ..Timeline::default() }))
            .collect();
        Timelines { convs }
    }

    /// The last seq handed to the app, per conversation (what `sync` resumes from).
    pub(crate) fn cursors(&self) -> BTreeMap<ConversationId, Seq> {
        self.convs.iter().filter_map(|(c, t)| Some((*c, t.cursor?))).collect()
    }

    /// Takes one entry; pushes to `out` what may go to the app now, in order. Returns the
    /// fill to request when this entry revealed a gap (and no fill is in flight).
    pub(crate) fn accept(&mut self, entry: Entry, out: &mut Vec<Entry>) -> Option<Fill> {
        let conv = entry.conversation;
        let t = self.convs.entry(conv).or_default();
        t.take(entry, out);
        t.next_fill(conv)
    }

    /// A fill's page arrived: its entries go through, then whatever it unblocked. Returns the
    /// next fill if a gap remains. A page that makes no progress means the server cannot
    /// supply the gap: it is skipped (logged) rather than blocking the conversation forever.
    pub(crate) fn filled(
        &mut self,
        conv: ConversationId,
        entries: Vec<Entry>,
        out: &mut Vec<Entry>,
    ) -> Option<Fill> {
        let t = self.convs.entry(conv).or_default();
        t.filling = false;
        let before = t.cursor;
        for entry in entries.into_iter().filter(|e| e.conversation == conv) {
            t.take(entry, out);
        }
        if t.cursor == before && t.gap() {
            tracing::warn!(%conv, cursor = ?t.cursor, target = t.target, "server cannot fill a gap; skipping it");
            t.skip_gap(out);
        }
        t.next_fill(conv)
    }

    /// A fill was refused (for example the user left the conversation): the gap is skipped.
    pub(crate) fn fill_failed(&mut self, conv: ConversationId, out: &mut Vec<Entry>) {
        if let Some(t) = self.convs.get_mut(&conv) {
            t.filling = false;
            t.skip_gap(out);
        }
    }

    /// The connection dropped: held entries and fills in flight are forgotten (the next
    /// `sync` brings everything after the cursors again).
    pub(crate) fn disconnected(&mut self) {
        for t in self.convs.values_mut() {
            t.held.clear();
            t.filling = false;
            t.target = t.cursor.unwrap_or(0);
        }
    }

    /// Forgets everything (the stored state belonged to another user).
    pub(crate) fn clear(&mut self) {
        self.convs.clear();
    }
}

impl Timeline {
    fn take(&mut self, entry: Entry, out: &mut Vec<Entry>) {
        let seq = entry.seq;
        match self.cursor {
            Some(cursor) if seq <= cursor => return,
            Some(cursor) if seq > cursor + 1 => {
                self.target = self.target.max(seq);
                if self.held.len() < HELD_CAP || self.held.contains_key(&seq) {
                    self.held.insert(seq, entry);
                }
                return;
            }
            // The next one, or the first one ever seen: it starts the timeline.
            _ => {
                self.cursor = Some(seq);
                self.target = self.target.max(seq);
                out.push(entry);
            }
        }
        self.drain(out);
    }

    /// Hands on held entries that have become next.
    fn drain(&mut self, out: &mut Vec<Entry>) {
        let Some(mut cursor) = self.cursor else { return };
        while let Some(entry) = self.held.first_entry() {
            let seq = *entry.key();
            if seq <= cursor {
                entry.remove();
            } else if seq == cursor + 1 {
                out.push(entry.remove());
                cursor = seq;
            } else {
                break;
            }
        }
        self.cursor = Some(cursor);
    }

    /// Whether entries are known to exist after the cursor that were not handed on.
    fn gap(&self) -> bool {
        self.cursor.is_some_and(|c| c < self.target)
    }

    fn next_fill(&mut self, conv: ConversationId) -> Option<Fill> {
        if self.filling || !self.gap() {
            return None;
        }
        let cursor = self.cursor?;
        // Up to just before the first held entry; with nothing held, up to the target.
        let upto = self.held.keys().next().map_or(self.target, |s| s - 1);
        let limit = (upto - cursor).clamp(1, MAX_FILL) as u32;
        self.filling = true;
        Some(Fill { conversation: conv, after: cursor, limit })
    }

    fn skip_gap(&mut self, out: &mut Vec<Entry>) {
        match self.held.keys().next() {
            Some(&first) => {
                self.cursor = Some(first - 1);
                self.drain(out);
            }
            None => self.target = self.cursor.unwrap_or(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use natter_proto::{EntryBody, UserId};

    use super::*;

    const C: ConversationId = ConversationId(9);

    fn entry(seq: Seq) -> Entry {
        Entry {
            conversation: C,
            seq,
            id: format!("e{seq}"),
            sender: UserId(1),
            ts: 0,
            client_msg_id: None,
            body: EntryBody::Message {
                body: format!("m{seq}"),
                reply_to: None,
                attachments: Vec::new(),
                mentions: Vec::new(),
            },
            state: None,
        }
    }

    fn seqs(out: &mut Vec<Entry>) -> Vec<Seq> {
        out.drain(..).map(|e| e.seq).collect()
    }

    #[test]
    fn passes_contiguous_entries_and_drops_duplicates() {
        let mut t = Timelines::new(&[(C, 3)].into_iter().collect());
        let mut out = Vec::new();
        for seq in [2, 3, 4, 4, 5, 1, 5] {
            assert_eq!(t.accept(entry(seq), &mut out), None);
        }
        assert_eq!(seqs(&mut out), [4, 5]);
        assert_eq!(t.cursors(), [(C, 5)].into_iter().collect());
    }

    #[test]
    fn the_first_entry_of_an_unknown_conversation_starts_it() {
        let mut t = Timelines::default();
        let mut out = Vec::new();
        assert_eq!(t.accept(entry(57), &mut out), None);
        assert_eq!(t.accept(entry(58), &mut out), None);
        assert_eq!(seqs(&mut out), [57, 58]);
    }

    #[test]
    fn a_gap_holds_later_entries_until_the_fill_arrives() {
        let mut t = Timelines::new(&[(C, 2)].into_iter().collect());
        let mut out = Vec::new();
        let fill = t.accept(entry(6), &mut out);
        assert_eq!(fill, Some(Fill { conversation: C, after: 2, limit: 3 }));
        // More live entries and a duplicate while the fill is in flight: held, no second fill.
        assert_eq!(t.accept(entry(7), &mut out), None);
        assert_eq!(t.accept(entry(6), &mut out), None);
        assert!(out.is_empty());
        assert_eq!(t.cursors(), [(C, 2)].into_iter().collect(), "cursor waits for the gap");

        // The page may overlap what is held.
        assert_eq!(t.filled(C, (3..=6).map(entry).collect(), &mut out), None);
        assert_eq!(seqs(&mut out), [3, 4, 5, 6, 7]);
        assert_eq!(t.accept(entry(8), &mut out), None);
        assert_eq!(seqs(&mut out), [8]);
    }

    #[test]
    fn a_short_page_asks_for_the_rest() {
        let mut t = Timelines::new(&[(C, 0)].into_iter().collect());
        let mut out = Vec::new();
        assert_eq!(
            t.accept(entry(5), &mut out),
            Some(Fill { conversation: C, after: 0, limit: 4 })
        );
        let next = t.filled(C, vec![entry(1), entry(2)], &mut out);
        assert_eq!(next, Some(Fill { conversation: C, after: 2, limit: 2 }));
        assert_eq!(t.filled(C, vec![entry(3), entry(4)], &mut out), None);
        assert_eq!(seqs(&mut out), [1, 2, 3, 4, 5]);
    }

    #[test]
    fn a_huge_gap_is_fetched_in_pages_and_held_entries_are_capped() {
        let mut t = Timelines::new(&[(C, 0)].into_iter().collect());
        let mut out = Vec::new();
        let first = 2000;
        let fill = t.accept(entry(first), &mut out).expect("a fill");
        assert_eq!((fill.after, fill.limit), (0, MAX_FILL as u32));
        for seq in first + 1..first + 1 + 2 * HELD_CAP as Seq {
            assert_eq!(t.accept(entry(seq), &mut out), None);
        }
        let last = first + 2 * HELD_CAP as Seq;
        // Serve every fill from a "server" log until no gap remains.
        let mut fill = Some(fill);
        let mut n_fills = 0;
        while let Some(f) = fill {
            n_fills += 1;
            let page = (f.after + 1..=f.after + Seq::from(f.limit)).map(entry).collect();
            fill = t.filled(C, page, &mut out);
        }
        assert!(n_fills > 4, "paged: {n_fills} fills");
        assert_eq!(seqs(&mut out), (1..=last).collect::<Vec<_>>());
    }

    #[test]
    fn a_gap_the_server_cannot_fill_is_skipped() {
        let mut t = Timelines::new(&[(C, 2)].into_iter().collect());
        let mut out = Vec::new();
        assert!(t.accept(entry(5), &mut out).is_some());
        assert_eq!(t.filled(C, Vec::new(), &mut out), None);
        assert_eq!(seqs(&mut out), [5]);

        assert!(t.accept(entry(8), &mut out).is_some());
        t.fill_failed(C, &mut out);
        assert_eq!(seqs(&mut out), [8]);
        assert_eq!(t.accept(entry(9), &mut out), None);
        assert_eq!(seqs(&mut out), [9]);
    }

    #[test]
    fn a_disconnect_forgets_held_entries() {
        let mut t = Timelines::new(&[(C, 1)].into_iter().collect());
        let mut out = Vec::new();
        assert!(t.accept(entry(4), &mut out).is_some());
        t.disconnected();
        // After the reconnect's sync, the entries come again, in order.
        for seq in 2..=4 {
            assert_eq!(t.accept(entry(seq), &mut out), None);
        }
        assert_eq!(seqs(&mut out), [2, 3, 4]);
    }
}

//! The core of the ordering engine: for one session, where each conversation's stream stands
//! and what may be sent next. It does no I/O, is not async and cannot fail. Inputs are what
//! happened (a live entry arrived, the store answered a read, a sync ran, the bus may have
//! lost entries, a long-poll reset); outputs are the entries to send, in order ([`Emit`]),
//! and the store read needed to go on ([`Read`]). The session's `delivery::Deliverer` does
//! the reads and frames the entries; `delivery::sync` asks where each conversation's sync
//! starts ([`Sequencer::sync_read`]) and records how it ended ([`Sequencer::sync_ran`]),
//! including the conversations its byte budget did not reach ([`Synced::Unreached`]).
//!
//! What the client was sent of a conversation is always a contiguous run of the log ending
//! at `upto` (starting at 1, or at the first entry of the page that announced it): a live
//! entry goes out only as `upto + 1`, the gap before it is read from the store first, and
//! anything at or below `upto` is dropped.

use std::collections::{BTreeMap, HashMap};

use natter_proto::{ConversationId, Entry, Seq};
use natter_store::Range;

/// Page sizes of the store reads the sequencer asks for.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pages {
    /// An announcement's latest page (`default_page`, as a sync gives).
    pub(crate) latest: u32,
    /// The most one gap-fill read asks for (`max_page`).
    pub(crate) max: u32,
}

/// Something to send, in the order the sequencer pushed it.
#[derive(Debug, PartialEq)]
pub(crate) enum Emit {
    /// An entry the store supplied (a gap fill or an announcement page). Boxed: the live
    /// case, the common one, should not take an entry's room in the caller's buffer.
    Stored(Box<Entry>),
    /// The live entry given to [`Sequencer::live`]; the caller holds its frame.
    Live { conv: ConversationId, seq: Seq },
}

/// A store read the sequencer needs before it can go on: pass its entries (or `None` if the
/// store failed) to [`Sequencer::page`]. Dropping it instead is safe: whatever waited on it
/// is lost as if the bus had lost it, and the next live entry or catch-up brings it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Read {
    pub(crate) conv: ConversationId,
    pub(crate) range: Range,
    pub(crate) limit: u32,
    then: Then,
}

impl Read {
    /// Whether this reads the latest page of a conversation new to the session (the driver
    /// first makes sure it receives the conversation's entries live).
    pub(crate) fn announces(&self) -> bool {
        matches!(self.then, Then::Announce { .. })
    }
}

/// Where a sync starts for one conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SyncRead {
    /// Nothing after the cursor: no page.
    UpToDate,
    /// The entries after this seq.
    After(Seq),
    /// New to the client: its latest page (older entries are a history call away).
    Latest,
}

impl SyncRead {
    /// From the cursor the sync uses and the conversation's last seq.
    pub(crate) fn new(cursor: Option<Seq>, last_seq: Seq) -> SyncRead {
        match cursor {
            Some(c) if c >= last_seq => SyncRead::UpToDate,
            Some(c) => SyncRead::After(c),
            None => SyncRead::Latest,
        }
    }
}

/// How a sync ended for one conversation; see [`Sequencer::sync_ran`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Synced {
    /// [`SyncRead::UpToDate`]; `last_seq` is the conversation summary's.
    UpToDate { last_seq: Seq },
    /// The reply carries a page read after `cursor` (`None`: the latest page) whose last
    /// entry is `last`; `has_more`: newer entries follow.
    Page { cursor: Option<Seq>, last: Option<Seq>, has_more: bool },
    /// The reply ran out of budget before this conversation: it carries nothing of it, and
    /// the client syncs again.
    Unreached,
}

/// One session's per-conversation delivery state.
#[derive(Debug)]
pub(crate) struct Sequencer {
    pages: Pages,
    convs: HashMap<ConversationId, Delivery>,
    /// Whether a sync ran: only then are conversations new to the session announced.
    synced: bool,
}

/// How far a session has delivered one conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Delivery {
    /// Everything up to this seq was sent; live entries continue from here.
    Live(Seq),
    /// The client is paging through a backlog (it got `has_more`) and has seen up to this
    /// seq; live entries wait until a sync reaches the end.
    Behind(Seq),
    /// A sync ran out of budget before it and the session never sent any of it: nothing is
    /// sent (it is not new to the client, which syncs again) until a sync reaches it.
    Unreached,
}

impl Delivery {
    /// The last seq sent (`None`: nothing yet).
    fn upto(self) -> Option<Seq> {
        match self {
            Delivery::Live(s) | Delivery::Behind(s) => Some(s),
            Delivery::Unreached => None,
        }
    }
}

/// What a [`Read`] is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Then {
    /// Fill the run up to `before - 1`; then send the live entry `before` if `live`.
    Fill { before: Seq, live: bool },
    /// Start the conversation at its latest page, or at `empty` if the page is empty; then go
    /// on with the live entry `live`.
    Announce { live: Option<Seq>, empty: Seq },
}

impl Sequencer {
    pub(crate) fn new(pages: Pages) -> Sequencer {
        debug_assert!(pages.latest > 0 && pages.max > 0, "empty pages: {pages:?}");
        Sequencer { pages, convs: HashMap::new(), synced: false }
    }

    /// Where each conversation's stream stands (what the client has been sent).
    pub(crate) fn cursors(&self) -> BTreeMap<ConversationId, Seq> {
        self.convs.iter().filter_map(|(c, d)| Some((*c, d.upto()?))).collect()
    }

    /// The conversations a sync did not reach yet, of which nothing was sent.
    pub(crate) fn unreached(&self) -> impl Iterator<Item = ConversationId> + '_ {
        self.convs.iter().filter(|(_, d)| **d == Delivery::Unreached).map(|(c, _)| *c)
    }

    /// Whether a sync ran (a catch-up before one has nothing to do).
    pub(crate) fn has_synced(&self) -> bool {
        self.synced
    }

    /// A live entry arrived. Emits it if it is next for its conversation; asks for the gap
    /// before it, or for the latest page of a conversation new to the session; drops it if
    /// it was sent already, before the first sync, or while the client pages a backlog.
    pub(crate) fn live(
        &mut self,
        conv: ConversationId,
        seq: Seq,
        out: &mut Vec<Emit>,
    ) -> Option<Read> {
        let next = match self.convs.get(&conv) {
            Some(Delivery::Live(upto)) => self.next_live(conv, *upto, seq, out),
            // Paging through a backlog, or not reached by a sync yet: a sync brings this entry.
            Some(Delivery::Behind(_) | Delivery::Unreached) => None,
            // Before the first sync the client has not asked for anything yet.
            None if !self.synced => None,
            // A conversation new to this session (created, or the user was added): announce
            // it with its latest page, as sync does.
            None => Some(self.announce(conv, Some(seq), seq.saturating_sub(1))),
        };
        self.check();
        next
    }

    /// The store's answer to `read` (`None`: the read failed, and what waited on it is
    /// dropped: the next live entry or catch-up fills the gap). Emits what continues the
    /// conversation's run and, once the gap is filled, the live entry that waited; may ask
    /// for the next page.
    pub(crate) fn page(
        &mut self,
        read: Read,
        entries: Option<Vec<Entry>>,
        out: &mut Vec<Emit>,
    ) -> Option<Read> {
        let next = self.answer(read, entries?, out);
        self.check();
        next
    }

    /// Where a sync starts for `conv`: at the client's cursor, but never before what this
    /// session already sent.
    pub(crate) fn sync_read(
        &self,
        conv: ConversationId,
        client: Option<Seq>,
        last_seq: Seq,
    ) -> SyncRead {
        let sent = self.convs.get(&conv).and_then(|d| d.upto());
        SyncRead::new(client.max(sent), last_seq)
    }

    /// A sync succeeded (record nothing of one that failed: its reply was an error). Each
    /// conversation of the reply continues where its part ended; one with `has_more` holds
    /// live entries until a later sync reaches the end; one the reply did not reach goes on
    /// as it was, or, if the session sent nothing of it, waits for a sync to reach it.
    pub(crate) fn sync_ran(
        &mut self,
        outcomes: impl IntoIterator<Item = (ConversationId, Synced)>,
    ) {
        for (conv, synced) in outcomes {
            let sent = self.convs.get(&conv).and_then(|d| d.upto());
            let delivery = match synced {
                Synced::Unreached => {
                    self.convs.entry(conv).or_insert(Delivery::Unreached);
                    continue;
                }
                // Never below what this session already sent (the summary may be older).
                Synced::UpToDate { last_seq } => Delivery::Live(last_seq.max(sent.unwrap_or(0))),
                Synced::Page { cursor, last, has_more } => {
                    debug_assert!(
                        cursor >= sent,
                        "{conv}: a sync read from {cursor:?}, sent {sent:?}"
                    );
                    debug_assert!(last.is_some() || !has_more, "{conv}: an empty page has more");
                    let upto = last.or(cursor).unwrap_or(0);
                    if has_more { Delivery::Behind(upto) } else { Delivery::Live(upto) }
                }
            };
            self.set(conv, delivery);
        }
        self.synced = true;
        self.check();
    }

    /// The bus may have lost entries (cluster mode) and the store says `conv` ends at
    /// `last_seq`: asks for what this session has not sent, or announces `conv` if it is new
    /// to the session. Nothing before the first sync, nor while the client pages a backlog.
    pub(crate) fn catch_up(&self, conv: ConversationId, last_seq: Seq) -> Option<Read> {
        if !self.synced {
            return None;
        }
        match self.convs.get(&conv) {
            Some(Delivery::Live(upto)) if last_seq > *upto => {
                Some(self.fill(conv, *upto, last_seq + 1, false))
            }
            Some(_) => None,
            None => Some(self.announce(conv, None, last_seq)),
        }
    }

    /// The node just subscribed to `conv`'s channel (cluster mode: it grew large): asks for
    /// whatever was published there before, up to the end of the log.
    pub(crate) fn resubscribed(&self, conv: ConversationId) -> Option<Read> {
        match self.convs.get(&conv) {
            Some(Delivery::Live(upto)) => Some(self.fill(conv, *upto, Seq::MAX, false)),
            _ => None,
        }
    }

    /// Forgets what was sent (long-poll: a response may have been lost, so the next sync's
    /// cursors are the truth). That a sync ran is kept.
    pub(crate) fn reset(&mut self) {
        self.convs.clear();
    }

    /// `seq` arrived live and `conv` stands at `upto`: sends it if it is next, drops it if it
    /// was sent, else asks for the gap before it.
    fn next_live(
        &mut self,
        conv: ConversationId,
        upto: Seq,
        seq: Seq,
        out: &mut Vec<Emit>,
    ) -> Option<Read> {
        if seq <= upto {
            return None;
        }
        if seq > upto + 1 {
            return Some(self.fill(conv, upto, seq, true));
        }
        out.push(Emit::Live { conv, seq });
        self.set(conv, Delivery::Live(seq));
        None
    }

    fn answer(&mut self, read: Read, entries: Vec<Entry>, out: &mut Vec<Emit>) -> Option<Read> {
        let conv = read.conv;
        let upto = match (self.convs.get(&conv), read.then) {
            (Some(Delivery::Live(upto)), _) => *upto,
            (None, Then::Announce { empty, .. }) => {
                let upto = entries.first().map_or(empty, |e| e.seq.saturating_sub(1));
                self.set(conv, Delivery::Live(upto));
                upto
            }
            // Reset or paging a backlog since the read was asked for: the next sync covers
            // what it was for.
            _ => return None,
        };
        match read.then {
            Then::Fill { before, live } => {
                let filled = self.absorb(conv, upto, entries, before, out);
                if filled + 1 < before {
                    // Read on while pages bring something. Without progress the store has
                    // nothing more for now, and a live entry that waited is dropped (the
                    // next one, or a catch-up, fills the gap).
                    return (filled > upto).then(|| self.fill(conv, filled, before, live));
                }
                if live { self.next_live(conv, filled, before, out) } else { None }
            }
            // The whole page, the live entry and later ones included: a large conversation's
            // entries published before the node subscribed to it would not arrive live.
            Then::Announce { live, .. } => {
                let filled = self.absorb(conv, upto, entries, Seq::MAX, out);
                live.and_then(|seq| self.next_live(conv, filled, seq, out))
            }
        }
    }

    /// Emits the entries of a store page that continue `conv`'s run from `upto`, below
    /// `before`, and stops at the first that does not (a hole). Returns where the run ends.
    fn absorb(
        &mut self,
        conv: ConversationId,
        upto: Seq,
        entries: Vec<Entry>,
        before: Seq,
        out: &mut Vec<Emit>,
    ) -> Seq {
        let mut filled = upto;
        for entry in entries {
            debug_assert_eq!(entry.conversation, conv, "a page of another conversation");
            if entry.seq <= filled {
                continue;
            }
            if entry.seq != filled + 1 || entry.seq >= before {
                break;
            }
            filled = entry.seq;
            out.push(Emit::Stored(Box::new(entry)));
        }
        if filled > upto {
            self.set(conv, Delivery::Live(filled));
        }
        filled
    }

    /// A read of `conv`'s entries `upto+1 .. before-1`, at most a page.
    fn fill(&self, conv: ConversationId, upto: Seq, before: Seq, live: bool) -> Read {
        debug_assert!(upto + 1 < before, "{conv}: no gap between {upto} and {before}");
        let limit = u32::try_from(before - 1 - upto).unwrap_or(u32::MAX).min(self.pages.max);
        Read { conv, range: Range::After(upto), limit, then: Then::Fill { before, live } }
    }

    fn announce(&self, conv: ConversationId, live: Option<Seq>, empty: Seq) -> Read {
        debug_assert!(!self.convs.contains_key(&conv), "{conv} is not new");
        let then = Then::Announce { live, empty };
        Read { conv, range: Range::Latest, limit: self.pages.latest, then }
    }

    fn set(&mut self, conv: ConversationId, delivery: Delivery) {
        let old = self.convs.insert(conv, delivery);
        // What was sent stays sent: only `reset` moves a stream back.
        debug_assert!(
            old.is_none_or(|o| o.upto() <= delivery.upto()),
            "{conv} went back from {old:?} to {delivery:?}"
        );
    }

    fn check(&self) {
        debug_assert!(self.synced || self.convs.is_empty(), "conversations known before a sync");
    }
}

#[cfg(test)]
mod tests {
    use natter_proto::{EntryBody, UserId};
    use proptest::prelude::*;

    use super::*;

    const PAGES: Pages = Pages { latest: 3, max: 2 };
    const A: ConversationId = ConversationId(1);
    const B: ConversationId = ConversationId(2);

    fn entry(conv: ConversationId, seq: Seq) -> Entry {
        Entry {
            conversation: conv,
            seq,
            id: format!("{conv}:{seq}"),
            sender: UserId(1),
            ts: 0,
            client_msg_id: None,
            body: EntryBody::Message {
                body: String::new(),
                reply_to: None,
                attachments: Vec::new(),
                mentions: Vec::new(),
            },
            state: None,
        }
    }

    fn page(conv: ConversationId, seqs: std::ops::RangeInclusive<Seq>) -> Option<Vec<Entry>> {
        Some(seqs.map(|s| entry(conv, s)).collect())
    }

    /// What was emitted, as `s3` (from the store) and `l4` (the live entry).
    fn sent(out: &mut Vec<Emit>) -> Vec<String> {
        out.drain(..)
            .map(|e| match e {
                Emit::Stored(e) => format!("s{}", e.seq),
                Emit::Live { seq, .. } => format!("l{seq}"),
            })
            .collect()
    }

    /// A sequencer after a sync that left each conversation live at its seq.
    fn synced(at: &[(ConversationId, Seq)]) -> Sequencer {
        let mut s = Sequencer::new(PAGES);
        s.sync_ran(at.iter().map(|&(c, last_seq)| (c, Synced::UpToDate { last_seq })));
        s
    }

    fn read(s: &mut Sequencer, conv: ConversationId, seq: Seq, out: &mut Vec<Emit>) -> Read {
        s.live(conv, seq, out).expect("a store read")
    }

    #[test]
    fn live_entries_continue_the_run_and_repeats_are_dropped() {
        let mut s = synced(&[(A, 3)]);
        let mut out = Vec::new();
        assert_eq!(s.live(A, 4, &mut out), None);
        assert_eq!(s.live(A, 4, &mut out), None);
        assert_eq!(s.live(A, 2, &mut out), None);
        assert_eq!(s.live(A, 5, &mut out), None);
        assert_eq!(sent(&mut out), ["l4", "l5"]);
        assert_eq!(s.cursors(), BTreeMap::from([(A, 5)]));
    }

    #[test]
    fn live_entries_before_the_first_sync_are_dropped() {
        let mut s = Sequencer::new(PAGES);
        let mut out = Vec::new();
        assert_eq!(s.live(A, 1, &mut out), None);
        assert!(out.is_empty() && s.cursors().is_empty() && !s.has_synced());
        assert_eq!(s.catch_up(A, 1), None);
    }

    #[test]
    fn a_gap_is_filled_from_the_store_page_by_page_before_the_live_entry() {
        let mut s = synced(&[(A, 3)]);
        let mut out = Vec::new();
        let r = read(&mut s, A, 8, &mut out);
        assert_eq!((r.conv, r.range, r.limit), (A, Range::After(3), 2));
        assert!(!r.announces());
        let r = s.page(r, page(A, 4..=5), &mut out).expect("the rest of the gap");
        assert_eq!((r.range, r.limit), (Range::After(5), 2));
        // The store may already hold the live entry and more: they wait for their turn.
        assert_eq!(s.page(r, page(A, 6..=9), &mut out), None);
        assert_eq!(sent(&mut out), ["s4", "s5", "s6", "s7", "l8"]);
        assert_eq!(s.cursors(), BTreeMap::from([(A, 8)]));
    }

    #[test]
    fn a_failed_or_empty_gap_fill_drops_the_live_entry_and_keeps_what_came() {
        let mut s = synced(&[(A, 3)]);
        let mut out = Vec::new();
        let r = read(&mut s, A, 9, &mut out);
        let r = s.page(r, page(A, 4..=5), &mut out).expect("more");
        assert_eq!(s.page(r, None, &mut out), None);
        assert_eq!(sent(&mut out), ["s4", "s5"]);
        assert_eq!(s.cursors(), BTreeMap::from([(A, 5)]));
        // The next live entry fills the gap again; an empty page drops it too.
        let r = read(&mut s, A, 10, &mut out);
        assert_eq!(r.range, Range::After(5));
        assert_eq!(s.page(r, Some(Vec::new()), &mut out), None);
        assert!(out.is_empty());
        assert_eq!(s.cursors(), BTreeMap::from([(A, 5)]));
    }

    #[test]
    fn a_page_with_a_hole_stops_at_the_hole() {
        let mut s = synced(&[(A, 3)]);
        let mut out = Vec::new();
        let r = read(&mut s, A, 9, &mut out);
        let mut entries = page(A, 4..=5).expect("entries");
        entries.insert(1, entry(A, 3));
        entries.push(entry(A, 7));
        let r = s.page(r, Some(entries), &mut out).expect("read on after 5");
        assert_eq!(r.range, Range::After(5));
        assert_eq!(sent(&mut out), ["s4", "s5"]);
        // A page that does not continue the run at all is no progress.
        assert_eq!(s.page(r, page(A, 7..=8), &mut out), None);
        assert!(out.is_empty());
    }

    #[test]
    fn live_entries_wait_while_the_client_pages_a_backlog() {
        let mut s = Sequencer::new(PAGES);
        s.sync_ran([(A, Synced::Page { cursor: Some(0), last: Some(2), has_more: true })]);
        let mut out = Vec::new();
        assert_eq!(s.live(A, 9, &mut out), None);
        assert_eq!(s.catch_up(A, 9), None);
        assert_eq!(s.resubscribed(A), None);
        assert!(out.is_empty());
        assert_eq!(s.sync_read(A, Some(1), 9), SyncRead::After(2));
        s.sync_ran([(A, Synced::Page { cursor: Some(2), last: Some(9), has_more: false })]);
        assert_eq!(s.live(A, 10, &mut out), None);
        assert_eq!(sent(&mut out), ["l10"]);
    }

    #[test]
    fn a_conversation_a_sync_did_not_reach_waits_for_a_sync() {
        let mut s = synced(&[(A, 3)]);
        let c = ConversationId(3);
        s.sync_ran([
            (A, Synced::Unreached),
            (B, Synced::Page { cursor: None, last: Some(2), has_more: true }),
            (c, Synced::Unreached),
        ]);
        // A stream already going goes on; one never sent is neither live nor announced.
        assert_eq!(s.cursors(), BTreeMap::from([(A, 3), (B, 2)]));
        assert_eq!(s.unreached().collect::<Vec<_>>(), [c]);
        let mut out = Vec::new();
        assert_eq!(s.live(A, 4, &mut out), None);
        assert_eq!(s.live(c, 9, &mut out), None);
        assert_eq!(s.catch_up(c, 9), None);
        assert_eq!(s.resubscribed(c), None);
        assert_eq!(sent(&mut out), ["l4"]);
        assert_eq!(s.sync_read(c, Some(4), 9), SyncRead::After(4));
        assert_eq!(s.sync_read(c, None, 9), SyncRead::Latest);
        s.sync_ran([(c, Synced::Page { cursor: Some(4), last: Some(9), has_more: false })]);
        assert_eq!(s.live(c, 10, &mut out), None);
        assert_eq!(sent(&mut out), ["l10"]);
        assert_eq!(s.unreached().count(), 0);
    }

    #[test]
    fn a_conversation_new_to_the_session_is_announced_with_its_latest_page() {
        let mut s = synced(&[(A, 3)]);
        let mut out = Vec::new();
        let r = read(&mut s, B, 5, &mut out);
        assert!(r.announces());
        assert_eq!((r.conv, r.range, r.limit), (B, Range::Latest, 3));
        // The whole page, the live entry and a later one included; the live one then repeats.
        assert_eq!(s.page(r, page(B, 4..=6), &mut out), None);
        assert_eq!(sent(&mut out), ["s4", "s5", "s6"]);
        assert_eq!(s.cursors(), BTreeMap::from([(A, 3), (B, 6)]));
        assert_eq!(s.live(B, 7, &mut out), None);
        assert_eq!(sent(&mut out), ["l7"]);
    }

    #[test]
    fn an_announcement_ending_before_the_live_entry_fills_the_gap() {
        let mut s = synced(&[]);
        let mut out = Vec::new();
        let r = read(&mut s, B, 6, &mut out);
        let r = s.page(r, page(B, 2..=4), &mut out).expect("the gap to 6");
        assert_eq!(r.range, Range::After(4));
        assert_eq!(s.page(r, page(B, 5..=5), &mut out), None);
        assert_eq!(sent(&mut out), ["s2", "s3", "s4", "s5", "l6"]);
    }

    #[test]
    fn an_empty_announcement_sends_the_live_entry_and_a_failed_one_forgets_it() {
        let mut s = synced(&[]);
        let mut out = Vec::new();
        let r = read(&mut s, B, 1, &mut out);
        assert_eq!(s.page(r, None, &mut out), None);
        assert!(s.cursors().is_empty());
        let r = read(&mut s, B, 1, &mut out);
        assert_eq!(s.page(r, Some(Vec::new()), &mut out), None);
        assert_eq!(sent(&mut out), ["l1"]);
        assert_eq!(s.cursors(), BTreeMap::from([(B, 1)]));
    }

    #[test]
    fn a_sync_starts_after_the_client_cursor_and_what_was_sent() {
        let s = synced(&[(A, 5)]);
        assert_eq!(s.sync_read(A, None, 5), SyncRead::UpToDate);
        assert_eq!(s.sync_read(A, Some(2), 9), SyncRead::After(5));
        assert_eq!(s.sync_read(A, Some(7), 9), SyncRead::After(7));
        assert_eq!(s.sync_read(A, Some(9), 9), SyncRead::UpToDate);
        assert_eq!(s.sync_read(B, Some(0), 9), SyncRead::After(0));
        assert_eq!(s.sync_read(B, None, 9), SyncRead::Latest);
        assert_eq!(SyncRead::new(Some(12), 9), SyncRead::UpToDate);
    }

    #[test]
    fn a_sync_records_where_each_stream_continues() {
        let mut s = synced(&[(A, 5)]);
        let c = ConversationId(3);
        s.sync_ran([
            // An older summary never moves the stream back.
            (A, Synced::UpToDate { last_seq: 4 }),
            (B, Synced::Page { cursor: None, last: Some(7), has_more: false }),
            (c, Synced::Page { cursor: Some(2), last: None, has_more: false }),
        ]);
        assert_eq!(s.cursors(), BTreeMap::from([(A, 5), (B, 7), (c, 2)]));
        s.sync_ran([(A, Synced::UpToDate { last_seq: 6 })]);
        assert_eq!(s.cursors()[&A], 6);
    }

    #[test]
    fn a_catch_up_reads_what_is_missing_and_announces_what_is_new() {
        let mut s = synced(&[(A, 3)]);
        let mut out = Vec::new();
        assert_eq!(s.catch_up(A, 3), None);
        let r = s.catch_up(A, 6).expect("a fill");
        assert_eq!((r.range, r.limit), (Range::After(3), 2));
        let r = s.page(r, page(A, 4..=5), &mut out).expect("the rest");
        assert_eq!(s.page(r, page(A, 6..=6), &mut out), None);
        assert_eq!(sent(&mut out), ["s4", "s5", "s6"]);
        let r = s.catch_up(B, 4).expect("an announcement");
        assert_eq!(r.range, Range::Latest);
        assert_eq!(s.page(r, Some(Vec::new()), &mut out), None);
        assert!(out.is_empty());
        assert_eq!(s.cursors(), BTreeMap::from([(A, 6), (B, 4)]));
    }

    #[test]
    fn a_resubscription_reads_to_the_end_of_the_log() {
        let mut s = synced(&[(A, 3)]);
        let mut out = Vec::new();
        assert_eq!(s.resubscribed(B), None);
        let r = s.resubscribed(A).expect("a read");
        let r = s.page(r, page(A, 4..=5), &mut out).expect("on");
        let r = s.page(r, page(A, 6..=6), &mut out).expect("on");
        assert_eq!(s.page(r, Some(Vec::new()), &mut out), None);
        assert_eq!(sent(&mut out), ["s4", "s5", "s6"]);
    }

    #[test]
    fn a_reset_forgets_what_was_sent_but_not_the_sync() {
        let mut s = synced(&[(A, 3)]);
        let mut out = Vec::new();
        let stale = read(&mut s, A, 6, &mut out);
        s.reset();
        assert!(s.cursors().is_empty() && s.has_synced());
        // A read asked for before the reset is moot.
        assert_eq!(s.page(stale, page(A, 4..=5), &mut out), None);
        assert!(out.is_empty() && s.cursors().is_empty());
        assert_eq!(s.sync_read(A, Some(1), 6), SyncRead::After(1));
    }

    // Property tests: a tiny store and bus drive the sequencer the way the deliverer and the
    // sync handler do, while the bus drops, repeats, reorders and holds back live entries,
    // reads fail or are abandoned and answered late, the client resyncs, long-poll responses
    // are lost, and catch-ups and new memberships arrive in any order. The client's view of
    // every conversation must stay one contiguous run, each entry once, in seq order, and
    // equal what the sequencer says it sent; at the end every conversation is complete.

    const CONVS: usize = 3;

    #[derive(Debug, Clone, Copy)]
    enum Route {
        Drop,
        Deliver,
        Twice,
        Hold,
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// Commit the next entry of a conversation and route it (to a member).
        Commit(usize, Route),
        /// Deliver a held entry, out of order.
        Release(usize),
        /// Deliver again an entry committed `back` entries before the last.
        Replay(usize, Seq),
        /// The client asks for a sync: its cursors now, while the request waits behind live
        /// entries in the session's queue.
        Ask,
        /// The session runs the sync asked for (or one with the client's cursors now);
        /// summaries may lag the log by up to this.
        Sync(Seq),
        /// Long-poll: the last response may be lost; reset, then sync from the client's cursors.
        Poll { lost: bool },
        /// The bus may have lost entries.
        CatchUp,
        /// The user is added to a conversation (the `member_added` entry is routed).
        Join(usize, Route),
        /// The store's next read fails.
        Fail,
        /// The driver's next read is abandoned (its future dropped).
        Cancel,
        /// An abandoned read is answered now, late.
        Late(usize),
    }

    fn route() -> impl Strategy<Value = Route> {
        prop_oneof![
            1 => Just(Route::Drop),
            5 => Just(Route::Deliver),
            1 => Just(Route::Twice),
            2 => Just(Route::Hold),
        ]
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            12 => (0..CONVS, route()).prop_map(|(c, r)| Op::Commit(c, r)),
            3 => any::<usize>().prop_map(Op::Release),
            1 => (0..CONVS, 0..6u64).prop_map(|(c, back)| Op::Replay(c, back)),
            1 => Just(Op::Ask),
            2 => (0..3u64).prop_map(Op::Sync),
            1 => any::<bool>().prop_map(|lost| Op::Poll { lost }),
            1 => Just(Op::CatchUp),
            1 => (0..CONVS, route()).prop_map(|(c, r)| Op::Join(c, r)),
            1 => Just(Op::Fail),
            1 => Just(Op::Cancel),
            1 => any::<usize>().prop_map(Op::Late),
        ]
    }

    #[derive(Debug, Clone)]
    struct Scenario {
        /// Per conversation: the length of its log, and how much of it is committed at start.
        logs: Vec<(Seq, Seq)>,
        /// Per conversation: whether the user is a member from the start, and whether the
        /// client's first sync lists it at cursor 0 (else it is new to the client).
        members: Vec<(bool, bool)>,
        pages: Pages,
        sync_limit: u32,
        /// Entries one sync reply may carry (the byte budget, counted in entries), and
        /// conversations with entries it may carry.
        budget: (usize, usize),
        ops: Vec<Op>,
        /// Whether the last entry of each log is routed at the end (else only a catch-up
        /// brings what is missing).
        last_live: bool,
    }

    fn scenario(max_log: Seq, max_page: u32, max_ops: usize) -> impl Strategy<Value = Scenario> {
        let log = (1..=max_log).prop_flat_map(|len| (Just(len), 1..=len));
        let pages = (1..=max_page).prop_flat_map(|max| (1..=max, Just(max)));
        (
            proptest::collection::vec(log, CONVS),
            proptest::collection::vec(any::<(bool, bool)>(), CONVS),
            pages,
            1..=max_page,
            (1..=2 * max_page as usize, 1..=CONVS),
            proptest::collection::vec(op(), 0..=max_ops),
            any::<bool>(),
        )
            .prop_map(
                |(logs, members, (latest, max), sync_limit, budget, ops, last_live)| {
                    let pages = Pages { latest, max };
                    Scenario { logs, members, pages, sync_limit, budget, ops, last_live }
                },
            )
    }

    fn id(c: usize) -> ConversationId {
        ConversationId(i64::try_from(c).expect("few conversations"))
    }

    fn index(conv: ConversationId) -> usize {
        usize::try_from(conv.0).expect("a test conversation")
    }

    /// The sequencer, a store log per conversation, a bus and the client's view.
    struct Model {
        seq: Sequencer,
        out: Vec<Emit>,
        logs: Vec<Seq>,
        committed: Vec<Seq>,
        member: Vec<bool>,
        held: Vec<(usize, Seq)>,
        /// What the client received of each conversation, in order.
        client: Vec<Vec<Seq>>,
        /// The client's cursors before it received anything (0: "from the start").
        seeds: Vec<Option<Seq>>,
        /// What the client had after the last long-poll response it got.
        checkpoint: Vec<usize>,
        /// The cursors of a sync the client asked for that has not run yet.
        asked: Option<Vec<Option<Seq>>>,
        /// Per conversation: the client's last sync reply had `has_more` (it pages a backlog,
        /// and nothing else of it may arrive before its next sync).
        behind: Vec<bool>,
        /// The client's last sync reply said `more` (its budget ran out).
        more: bool,
        sync_limit: u32,
        budget: (usize, usize),
        fail: bool,
        cancel: bool,
        abandoned: Vec<Read>,
    }

    impl Model {
        fn new(s: &Scenario) -> Model {
            Model {
                seq: Sequencer::new(s.pages),
                out: Vec::new(),
                logs: s.logs.iter().map(|l| l.0).collect(),
                committed: s.logs.iter().map(|l| l.1).collect(),
                member: s.members.iter().map(|m| m.0).collect(),
                held: Vec::new(),
                client: vec![Vec::new(); CONVS],
                seeds: s
                    .members
                    .iter()
                    .map(|&(m, from_start)| (m && from_start).then_some(0))
                    .collect(),
                checkpoint: vec![0; CONVS],
                asked: None,
                behind: vec![false; CONVS],
                more: false,
                sync_limit: s.sync_limit,
                budget: s.budget,
                fail: false,
                cancel: false,
                abandoned: Vec::new(),
            }
        }

        fn cursor(&self, c: usize) -> Option<Seq> {
            self.client[c].last().copied().or(self.seeds[c])
        }

        /// An entry the session sent outside a sync reply.
        fn delivered(&mut self, c: usize, seq: Seq) {
            assert!(!self.behind[c], "{c}:{seq} sent while the client pages a backlog");
            self.receive(c, seq);
        }

        fn receive(&mut self, c: usize, seq: Seq) {
            assert!(self.member[c], "{c}:{seq} reached a non-member");
            assert!(seq <= self.committed[c], "{c}:{seq} is not committed");
            if let Some(cursor) = self.cursor(c) {
                assert_eq!(seq, cursor + 1, "conversation {c}: {seq} after {cursor}");
            }
            self.client[c].push(seq);
        }

        /// The store: entries of `conv` committed so far.
        fn store(
            &mut self,
            conv: ConversationId,
            range: Range,
            limit: u32,
        ) -> Option<(Vec<Entry>, bool)> {
            if std::mem::take(&mut self.fail) {
                return None;
            }
            let last = self.committed[index(conv)];
            let limit = Seq::from(limit);
            let (from, to) = match range {
                Range::After(after) => (after + 1, last.min(after + limit)),
                Range::Latest => ((last + 1).saturating_sub(limit).max(1), last),
                Range::Before(_) => unreachable!("delivery never reads backwards"),
            };
            Some(((from..=to).map(|s| entry(conv, s)).collect(), to < last))
        }

        /// What `Deliverer::drive` does.
        fn drive(&mut self, mut next: Option<Read>) {
            loop {
                for emit in std::mem::take(&mut self.out) {
                    match emit {
                        Emit::Stored(e) => self.delivered(index(e.conversation), e.seq),
                        Emit::Live { conv, seq } => self.delivered(index(conv), seq),
                    }
                }
                let Some(read) = next else { return };
                if std::mem::take(&mut self.cancel) {
                    self.abandoned.push(read);
                    return;
                }
                let entries = self.store(read.conv, read.range, read.limit).map(|p| p.0);
                next = self.seq.page(read, entries, &mut self.out);
            }
        }

        fn live(&mut self, c: usize, seq: Seq) {
            let next = self.seq.live(id(c), seq, &mut self.out);
            self.drive(next);
        }

        fn commit(&mut self, c: usize, route: Route) {
            if self.committed[c] == self.logs[c] {
                return;
            }
            self.committed[c] += 1;
            let seq = self.committed[c];
            if !self.member[c] {
                return;
            }
            match route {
                Route::Drop => {}
                Route::Deliver => self.live(c, seq),
                Route::Twice => {
                    self.live(c, seq);
                    self.live(c, seq);
                }
                Route::Hold => self.held.push((c, seq)),
            }
        }

        /// What `delivery::sync` does. Returns false if a read failed (an error reply).
        fn sync(&mut self, lag: Seq) -> bool {
            let cursors = match self.asked.take() {
                Some(cursors) => cursors,
                None => (0..CONVS).map(|c| self.cursor(c)).collect(),
            };
            let (max_entries, max_convs) = self.budget;
            let mut outcomes = Vec::new();
            let mut reply = Vec::new();
            let mut n_entries = 0;
            let mut more = false;
            let mut unreached = Vec::new();
            for (c, &client) in cursors.iter().enumerate() {
                if !self.member[c] {
                    continue;
                }
                let conv = id(c);
                // A summary read before the latest commits (and maybe before what the session
                // sent since the client asked), but after what the client had seen.
                let seen = client.unwrap_or(0);
                let last_seq = self.committed[c].saturating_sub(lag).max(seen).max(1);
                let limit = Seq::from(self.sync_limit);
                // The latest page is read forwards from where it starts.
                let (cursor, from) = match self.seq.sync_read(conv, client, last_seq) {
                    SyncRead::UpToDate => {
                        outcomes.push((conv, Synced::UpToDate { last_seq }));
                        continue;
                    }
                    SyncRead::After(after) => (Some(after), after),
                    SyncRead::Latest => (None, last_seq.saturating_sub(limit)),
                };
                if n_entries == max_entries || reply.len() == max_convs {
                    outcomes.push((conv, Synced::Unreached));
                    unreached.push(c);
                    more = true;
                    continue;
                }
                let take = u32::try_from(limit.min((max_entries - n_entries) as Seq))
                    .expect("a small page");
                let Some((entries, store_more)) = self.store(conv, Range::After(from), take) else {
                    return false;
                };
                // Cut short by the budget, before the page's limit.
                let cut = store_more && Seq::from(take) < limit;
                let has_more = if cursor.is_some() { store_more } else { cut };
                more |= has_more;
                n_entries += entries.len();
                let last = entries.last().map(|e| e.seq);
                outcomes.push((conv, Synced::Page { cursor, last, has_more }));
                reply.push((c, entries, has_more));
            }
            self.seq.sync_ran(outcomes);
            // A conversation the reply did not reach stays as it was.
            let behind = std::mem::replace(&mut self.behind, vec![false; CONVS]);
            for c in unreached {
                self.behind[c] = behind[c];
            }
            self.more = more;
            for (c, entries, has_more) in reply {
                self.behind[c] = has_more;
                for e in entries {
                    self.receive(c, e.seq);
                }
            }
            true
        }

        fn catch_up(&mut self) {
            if !self.seq.has_synced() {
                return;
            }
            for c in 0..CONVS {
                if !self.member[c] {
                    continue;
                }
                let next = self.seq.catch_up(id(c), self.committed[c]);
                self.drive(next);
            }
        }

        fn apply(&mut self, op: &Op) {
            match *op {
                Op::Commit(c, route) => self.commit(c, route),
                Op::Release(i) if !self.held.is_empty() => {
                    let (c, seq) = self.held.remove(i % self.held.len());
                    self.live(c, seq);
                }
                Op::Release(_) => {}
                Op::Replay(c, back) => {
                    if self.member[c] {
                        self.live(c, self.committed[c].saturating_sub(back).max(1));
                    }
                }
                Op::Ask => self.asked = Some((0..CONVS).map(|c| self.cursor(c)).collect()),
                Op::Sync(lag) => {
                    self.sync(lag);
                }
                Op::Poll { lost } => {
                    if lost {
                        for (c, n) in self.checkpoint.iter().enumerate() {
                            self.client[c].truncate(*n);
                        }
                    }
                    self.seq.reset();
                    self.asked = None;
                    // The client polls again at once if the store failed.
                    while !self.sync(0) {}
                    self.checkpoint = self.client.iter().map(Vec::len).collect();
                }
                Op::CatchUp => self.catch_up(),
                Op::Join(c, route) => {
                    if !self.member[c] {
                        self.member[c] = true;
                        self.commit(c, route);
                    }
                }
                Op::Fail => self.fail = true,
                Op::Cancel => self.cancel = true,
                Op::Late(i) if !self.abandoned.is_empty() => {
                    let read = self.abandoned.remove(i % self.abandoned.len());
                    let entries = self.store(read.conv, read.range, read.limit).map(|p| p.0);
                    let next = self.seq.page(read, entries, &mut self.out);
                    self.drive(next);
                }
                Op::Late(_) => {}
            }
        }

        /// The sequencer's cursors are exactly what the client holds, but for conversations
        /// a sync did not reach since a long-poll reset (the poll returns the client's own
        /// cursors for them: `Deliverer::next_cursors`).
        fn check_agrees(&self) {
            let client: BTreeMap<_, _> =
                (0..CONVS).filter_map(|c| self.client[c].last().map(|&s| (id(c), s))).collect();
            let mut cursors = self.seq.cursors();
            for conv in self.seq.unreached() {
                if let Some(&seq) = client.get(&conv) {
                    cursors.insert(conv, seq);
                }
            }
            assert_eq!(cursors, client);
        }

        /// Commits the rest of every log (the user in every conversation) with at most the
        /// last entry routed, then does what a client and a node do: sync until no
        /// `has_more`, and a catch-up.
        fn finish(&mut self, last_live: bool) {
            (self.fail, self.cancel, self.asked) = (false, false, None);
            for c in 0..CONVS {
                self.member[c] = true;
                while self.committed[c] < self.logs[c] {
                    self.commit(c, Route::Drop);
                }
                if last_live {
                    self.live(c, self.committed[c]);
                }
            }
            let mut n_syncs = 0;
            while self.more || self.behind.contains(&true) || !self.seq.has_synced() {
                assert!(self.sync(0));
                n_syncs += 1;
                // Every reply that says there is more carries at least one entry.
                let n_entries: Seq = self.logs.iter().sum();
                assert!(n_syncs <= n_entries + 10, "paging never ends");
            }
            self.catch_up();
            self.check_agrees();
            for c in 0..CONVS {
                let run = &self.client[c];
                assert_eq!(run.last(), Some(&self.logs[c]), "conversation {c} incomplete: {run:?}");
                if self.seeds[c].is_some() {
                    assert_eq!(run, &(1..=self.logs[c]).collect::<Vec<_>>());
                }
            }
        }
    }

    fn run(s: &Scenario) {
        let mut model = Model::new(s);
        for op in &s.ops {
            model.apply(op);
            model.check_agrees();
        }
        model.finish(s.last_live);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]

        /// Short logs and sessions with every kind of trouble.
        #[test]
        fn every_conversation_is_one_run_and_completes(s in scenario(12, 4, 60)) {
            run(&s);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Longer logs and sessions with small pages: many gap fills and backlog pages.
        #[test]
        fn long_sessions_with_small_pages_stay_in_order(s in scenario(40, 2, 250)) {
            run(&s);
        }
    }
}

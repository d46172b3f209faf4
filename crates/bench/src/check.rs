//! The checker: what the bench verifies on its own traffic.
//!
//! Every message the bench sends is named `"{sender}.{n}"` (`client_msg_id`): `sender` is the
//! sending connection's index, `n` counts that connection's sends. Two cheap records make
//! exactly-once, in-order delivery checkable without keeping every message:
//!
//! - each receiving session keeps a [`Track`] per conversation: the last `seq` it saw (the
//!   next must be exactly one more: no gap, no duplicate, no reordering), the last `n` per
//!   sender (a sender's messages arrive in the order it sent them), and a count and an
//!   order-independent fingerprint of the `(seq, sender, n)` triples it received;
//! - each sending session keeps an [`AckSum`] per conversation with the same count and
//!   fingerprint over its acks, and the highest acked `seq`.
//!
//! At the end, [`verify`] compares every receiver's track with the sum of the senders' acks:
//! equal counts and fingerprints mean every acked message arrived exactly once at the `seq`
//! it was acked with, and nothing else of the run arrived.

use std::collections::{HashMap, HashSet};
use std::fmt;

use natter_proto::Seq;

/// The `client_msg_id` of message `n` of connection `sender`.
pub(crate) fn msg_id(sender: u32, n: u64) -> String {
    format!("{sender}.{n}")
}

/// Reads a `client_msg_id` written by [`msg_id`].
pub(crate) fn parse_msg_id(id: &str) -> Option<(u32, u64)> {
    let (sender, n) = id.split_once('.')?;
    Some((sender.parse().ok()?, n.parse().ok()?))
}

/// One message's contribution to a fingerprint.
pub(crate) fn fingerprint(seq: Seq, sender: u32, n: u64) -> u64 {
    mix(seq ^ mix((u64::from(sender) << 40) ^ n))
}

/// splitmix64's finalizer: a cheap, well-spread 64-bit mix.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A broken guarantee, seen by one session in one conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Violation {
    /// `seq` jumped past `expected`: entries were skipped.
    Gap { expected: Seq, got: Seq },
    /// `seq` was already seen (a duplicate, or an entry out of order).
    Repeat { last: Seq, got: Seq },
    /// A sender's message arrived after a later one of the same sender.
    SenderOrder { sender: u32, last_n: u64, got_n: u64 },
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::Gap { expected, got } => {
                write!(f, "gap: expected seq {expected}, got {got}")
            }
            Violation::Repeat { last, got } => {
                write!(f, "duplicate or out of order: seq {got} after {last}")
            }
            Violation::SenderOrder { sender, last_n, got_n } => {
                write!(f, "sender {sender}'s message {got_n} arrived after its message {last_n}")
            }
        }
    }
}

/// What one session received of one conversation.
#[derive(Debug, Clone, Default)]
pub(crate) struct Track {
    /// The last `seq` received; the next must be `last + 1`.
    pub(crate) last: Seq,
    /// Messages of this run received.
    pub(crate) msgs: u64,
    /// Wrapping sum of [`fingerprint`]s of the messages received.
    pub(crate) fp: u64,
    /// Last `n` received from each sender (few senders per conversation: a short list).
    senders: Vec<(u32, u64)>,
}

impl Track {
    /// Records one entry. `msg` is `(sender, n)` for messages of this run, `None` for other
    /// entries (`created`, anything not sent by the bench). A repeated `seq` is not counted.
    pub(crate) fn on_entry(&mut self, seq: Seq, msg: Option<(u32, u64)>) -> Result<(), Violation> {
        if seq <= self.last {
            return Err(Violation::Repeat { last: self.last, got: seq });
        }
        let gap =
            (seq != self.last + 1).then_some(Violation::Gap { expected: self.last + 1, got: seq });
        self.last = seq;
        let mut order = None;
        if let Some((sender, n)) = msg {
            self.msgs += 1;
            self.fp = self.fp.wrapping_add(fingerprint(seq, sender, n));
            match self.senders.iter_mut().find(|(s, _)| *s == sender) {
                Some((_, last_n)) => {
                    if n <= *last_n {
                        order = Some(Violation::SenderOrder { sender, last_n: *last_n, got_n: n });
                    }
                    *last_n = (*last_n).max(n);
                }
                None => self.senders.push((sender, n)),
            }
        }
        match gap.or(order) {
            Some(v) => Err(v),
            None => Ok(()),
        }
    }
}

/// What the senders of one conversation were acked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct AckSum {
    pub(crate) count: u64,
    pub(crate) fp: u64,
    pub(crate) max_seq: Seq,
}

impl AckSum {
    pub(crate) fn on_ack(&mut self, seq: Seq, sender: u32, n: u64) {
        self.count += 1;
        self.fp = self.fp.wrapping_add(fingerprint(seq, sender, n));
        self.max_seq = self.max_seq.max(seq);
    }

    pub(crate) fn merge(&mut self, other: &AckSum) {
        self.count += other.count;
        self.fp = self.fp.wrapping_add(other.fp);
        self.max_seq = self.max_seq.max(other.max_seq);
    }
}

/// One receiver's final track of one conversation, named for the report.
pub(crate) struct Received<'a> {
    pub(crate) conn: u32,
    pub(crate) conversation: i64,
    pub(crate) track: &'a Track,
}

/// Compares every receiver's track with the acks of its conversation (`acks` by
/// conversation id). Returns one line per broken guarantee.
///
/// In the `uncertain` conversations some sends never got a reply: their messages may or may
/// not be stored, so only the tail is checked there (with the contiguity checked live, a
/// receiver that reached the highest acked seq received every acked message once).
pub(crate) fn verify(
    acks: &HashMap<i64, AckSum>,
    uncertain: &HashSet<i64>,
    received: &[Received<'_>],
) -> Vec<String> {
    let mut out = Vec::new();
    for r in received {
        let acked = acks.get(&r.conversation).copied().unwrap_or_default();
        let t = r.track;
        let who = format!("connection {} conversation {}", r.conn, r.conversation);
        if t.last < acked.max_seq {
            out.push(format!(
                "{who}: lost the tail: last seq received {}, highest acked {}",
                t.last, acked.max_seq
            ));
        }
        if uncertain.contains(&r.conversation) {
            continue;
        }
        if t.msgs != acked.count {
            let what = if t.msgs > acked.count { "duplicated or unacked" } else { "lost" };
            out.push(format!(
                "{who}: {what} messages: received {} of this run, {} were acked",
                t.msgs, acked.count
            ));
        } else if t.fp != acked.fp {
            out.push(format!(
                "{who}: the messages received are not the ones acked at those seqs \
                 (fingerprint {:016x} vs acked {:016x})",
                t.fp, acked.fp
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Acks for messages `(seq, sender, n)` of conversation 7.
    fn acks(msgs: &[(Seq, u32, u64)]) -> HashMap<i64, AckSum> {
        let mut sum = AckSum::default();
        for &(seq, sender, n) in msgs {
            sum.on_ack(seq, sender, n);
        }
        HashMap::from([(7, sum)])
    }

    /// A receiver that saw `created` at seq 1, then these entries; returns the live
    /// violations and the final verdict.
    fn receive(
        entries: &[(Seq, u32, u64)],
        acked: &HashMap<i64, AckSum>,
    ) -> (Vec<Violation>, Vec<String>) {
        let mut track = Track::default();
        let mut live = Vec::new();
        track.on_entry(1, None).expect("seq 1 is first");
        for &(seq, sender, n) in entries {
            if let Err(v) = track.on_entry(seq, Some((sender, n))) {
                live.push(v);
            }
        }
        let end =
            verify(acked, &HashSet::new(), &[Received { conn: 3, conversation: 7, track: &track }]);
        (live, end)
    }

    const SENT: [(Seq, u32, u64); 3] = [(2, 0, 0), (3, 1, 0), (4, 0, 1)];

    #[test]
    fn exact_delivery_passes() {
        let (live, end) = receive(&SENT, &acks(&SENT));
        assert!(live.is_empty(), "{live:?}");
        assert!(end.is_empty(), "{end:?}");
    }

    #[test]
    fn duplicate_is_caught() {
        let got = [(2, 0, 0), (3, 1, 0), (3, 1, 0), (4, 0, 1)];
        let (live, end) = receive(&got, &acks(&SENT));
        assert_eq!(live, vec![Violation::Repeat { last: 3, got: 3 }]);
        assert!(end.is_empty(), "a dropped repeat leaves the counts right: {end:?}");
    }

    #[test]
    fn duplicate_at_a_new_seq_is_caught() {
        // The server stored one message twice: contiguous seqs, but one message too many.
        let got = [(2, 0, 0), (3, 1, 0), (4, 0, 1), (5, 0, 1)];
        let (live, end) = receive(&got, &acks(&SENT));
        assert_eq!(live, vec![Violation::SenderOrder { sender: 0, last_n: 1, got_n: 1 }]);
        assert_eq!(end.len(), 1, "{end:?}");
        assert!(end[0].contains("duplicated"), "{end:?}");
    }

    #[test]
    fn gap_and_loss_are_caught() {
        let got = [(2, 0, 0), (4, 0, 1)];
        let (live, end) = receive(&got, &acks(&SENT));
        assert_eq!(live, vec![Violation::Gap { expected: 3, got: 4 }]);
        assert_eq!(end.len(), 1, "{end:?}");
        assert!(end[0].contains("lost messages"), "{end:?}");
    }

    #[test]
    fn missing_tail_is_caught() {
        let got = [(2, 0, 0), (3, 1, 0)];
        let (live, end) = receive(&got, &acks(&SENT));
        assert!(live.is_empty(), "{live:?}");
        assert_eq!(end.len(), 2, "{end:?}");
        assert!(end[0].contains("lost the tail: last seq received 3, highest acked 4"), "{end:?}");
    }

    #[test]
    fn reordering_is_caught() {
        let got = [(2, 0, 0), (4, 0, 1), (3, 1, 0)];
        let (live, _) = receive(&got, &acks(&SENT));
        assert_eq!(
            live,
            vec![Violation::Gap { expected: 3, got: 4 }, Violation::Repeat { last: 4, got: 3 }]
        );
    }

    #[test]
    fn a_message_at_the_wrong_seq_is_caught() {
        // Same messages, same seqs overall, but two swapped relative to their acks.
        let got = [(2, 1, 0), (3, 0, 0), (4, 0, 1)];
        let (live, end) = receive(&got, &acks(&SENT));
        assert!(live.is_empty(), "{live:?}");
        assert_eq!(end.len(), 1, "{end:?}");
        assert!(end[0].contains("not the ones acked"), "{end:?}");
    }

    #[test]
    fn unanswered_sends_only_relax_the_counts() {
        // A send without a reply may be stored: a message more than acked is fine there,
        // a missing tail is not.
        let got = [(2, 0, 0), (3, 1, 0), (4, 0, 1), (5, 0, 2)];
        let mut track = Track::default();
        track.on_entry(1, None).unwrap();
        for &(seq, sender, n) in &got {
            track.on_entry(seq, Some((sender, n))).unwrap();
        }
        let uncertain = HashSet::from([7]);
        let r = [Received { conn: 3, conversation: 7, track: &track }];
        assert!(verify(&acks(&SENT), &uncertain, &r).is_empty());
        assert_eq!(verify(&acks(&SENT), &HashSet::new(), &r).len(), 1);
        let short = Track { last: 3, ..track.clone() };
        let r = [Received { conn: 3, conversation: 7, track: &short }];
        assert_eq!(verify(&acks(&SENT), &uncertain, &r).len(), 1, "the tail is still checked");
    }

    #[test]
    fn msg_ids_round_trip() {
        assert_eq!(parse_msg_id(&msg_id(12, 345)), Some((12, 345)));
        assert_eq!(parse_msg_id("c-5f2a"), None);
        assert_eq!(parse_msg_id("1.x"), None);
    }
}

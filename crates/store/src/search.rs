//! Message search (issue 15), what both backends share: the text as it is indexed, the query
//! language, and snippets.
//!
//! Text is **folded** in Rust, the same way for the index and for queries, so that both
//! stores match alike: NFKD, combining marks dropped (`é` → `e`), lower case, and split into
//! tokens of letters and digits, each CJK character a token of its own (a CJK word is then a
//! phrase of its characters: `東京` matches the text `東京都`). The stores index the tokens
//! joined by spaces: SQLite's FTS5 (`unicode61`, nothing left for it to fold) and
//! PostgreSQL's `tsvector` under the configured text search configuration (which may stem).
//!
//! A query is words (all must match), `"quoted phrases"` and `prefix*` words.

use unicode_normalization::UnicodeNormalization;

use crate::{Result, StoreError};

/// Longest query, in characters.
pub const MAX_QUERY_CHARS: usize = 256;
/// Most words and phrases in one query.
pub const MAX_TERMS: usize = 16;
/// Characters of context a snippet shows around its first hit.
const SNIPPET_CONTEXT: usize = 60;

/// Whether a character is CJK (Han, kana, Hangul, and their punctuation-free blocks): a
/// token by itself.
fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x3040..=0x30FF      // Hiragana, Katakana
        | 0x3400..=0x4DBF    // CJK Extension A
        | 0x4E00..=0x9FFF    // CJK Unified Ideographs
        | 0xAC00..=0xD7AF    // Hangul syllables
        | 0x1100..=0x11FF    // Hangul Jamo
        | 0xF900..=0xFAFF    // CJK Compatibility Ideographs
        | 0x20000..=0x2FA1F) // Extensions B.., compatibility supplement
}

/// `c` folded: its NFKD form without combining marks, lower case.
fn fold_char(c: char, out: &mut String) {
    // Most chat text is ASCII, for which NFKD changes nothing: this runs on the store's
    // writer for every message.
    if c.is_ascii() {
        out.push(c.to_ascii_lowercase());
        return;
    }
    for d in std::iter::once(c).nfkd() {
        if unicode_normalization::char::is_combining_mark(d) {
            continue;
        }
        out.extend(d.to_lowercase());
    }
}

/// A token of a text: its folded form and where it is in the original, in chars.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Token {
    text: String,
    start: usize,
    end: usize,
}

fn tokens(text: &str) -> Vec<Token> {
    let mut out = Vec::new();
    let mut current: Option<Token> = None;
    let mut folded = String::new();
    for (i, c) in text.chars().enumerate() {
        folded.clear();
        fold_char(c, &mut folded);
        let cjk = is_cjk(c);
        let word = !cjk && !folded.is_empty() && folded.chars().all(char::is_alphanumeric);
        if word {
            match &mut current {
                Some(t) => {
                    t.text.push_str(&folded);
                    t.end = i + 1;
                }
                None => current = Some(Token { text: folded.clone(), start: i, end: i + 1 }),
            }
            continue;
        }
        out.extend(current.take());
        if cjk {
            out.push(Token { text: folded.clone(), start: i, end: i + 1 });
        }
    }
    out.extend(current);
    out
}

/// What the index holds of `text`: its folded tokens, space-separated.
pub(crate) fn index_text(text: &str) -> String {
    let toks = tokens(text);
    let mut out = String::with_capacity(text.len());
    for (i, t) in toks.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        out.push_str(&t.text);
    }
    out
}

/// A message's searchable text as hits show it: its body, then its attachment names.
pub(crate) fn document(body: String, names: &str) -> String {
    if names.is_empty() { body } else { format!("{body}\n{names}") }
}

/// What the index holds of a message with `body` and attachment `names`.
pub(crate) fn index_document(body: &str, names: &str) -> String {
    let mut tokens = index_text(body);
    let more = index_text(names);
    if !tokens.is_empty() && !more.is_empty() {
        tokens.push(' ');
    }
    tokens.push_str(&more);
    tokens
}

/// The id of a message's row in SQLite's FTS5 index: `(conversation << 32) | seq`, so that
/// a hit finds its `message_state` row by primary key with no table in between. `None` past
/// what it can hold (conversation 2^31, seq 2^32: such a message is not searchable).
pub(crate) fn doc_id(conversation: natter_proto::ConversationId, seq: u64) -> Option<i64> {
    let conv = u64::try_from(conversation.0).ok().filter(|c| *c < 1 << 31)?;
    (seq < 1 << 32).then_some(((conv << 32) | seq) as i64)
}

/// The file names of a message's attachments, one per line (indexed with its text).
pub(crate) fn attachment_names(attachments: &[natter_proto::Attachment]) -> String {
    let names: Vec<&str> = attachments.iter().filter_map(|a| a.name.as_deref()).collect();
    names.join("\n")
}

/// The attachment names of a stored message entry's JSON, and whether it has none.
pub(crate) fn names_in_json(json: &str) -> (String, bool) {
    let value: serde_json::Value = serde_json::from_str(json).unwrap_or_default();
    let list = value.get("attachments").and_then(|a| a.as_array()).cloned().unwrap_or_default();
    let names: Vec<&str> = list.iter().filter_map(|a| a.get("name")?.as_str()).collect();
    (names.join("\n"), list.is_empty())
}

/// One part of a query: a word (maybe a prefix) or a phrase of consecutive tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Term {
    Word { token: String, prefix: bool },
    Phrase(Vec<String>),
}

/// A parsed query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    terms: Vec<Term>,
}

impl Query {
    /// Parses a query: `bad_request` when it is empty (nothing searchable in it), longer than
    /// [`MAX_QUERY_CHARS`] or has more than [`MAX_TERMS`] terms.
    pub fn parse(q: &str) -> Result<Query> {
        if q.chars().count() > MAX_QUERY_CHARS {
            return Err(StoreError::BadRequest(format!(
                "a query is at most {MAX_QUERY_CHARS} characters"
            )));
        }
        let mut terms = Vec::new();
        // Quoted parts are phrases; the rest is words.
        for (i, part) in q.split('"').enumerate() {
            let quoted = i % 2 == 1;
            if quoted {
                let toks: Vec<String> = tokens(part).into_iter().map(|t| t.text).collect();
                match toks.len() {
                    0 => {}
                    1 => terms.push(Term::Word { token: toks[0].clone(), prefix: false }),
                    _ => terms.push(Term::Phrase(toks)),
                }
                continue;
            }
            for word in part.split_whitespace() {
                let prefix = word.ends_with('*');
                let toks: Vec<String> =
                    tokens(word.trim_end_matches('*')).into_iter().map(|t| t.text).collect();
                match toks.len() {
                    0 => {}
                    1 => terms.push(Term::Word { token: toks[0].clone(), prefix }),
                    // `e-mail`, `東京`: the tokens in a row.
                    _ => terms.push(Term::Phrase(toks)),
                }
            }
        }
        if terms.is_empty() {
            return Err(StoreError::BadRequest("the query has no word to search for".into()));
        }
        if terms.len() > MAX_TERMS {
            return Err(StoreError::BadRequest(format!("a query has at most {MAX_TERMS} terms")));
        }
        Ok(Query { terms })
    }

    /// The FTS5 `MATCH` expression: every term, each quoted (tokens are letters and digits,
    /// so nothing in them needs escaping).
    pub(crate) fn fts5(&self) -> String {
        let parts: Vec<String> = self
            .terms
            .iter()
            .map(|t| match t {
                Term::Word { token, prefix: true } => format!("\"{token}\"*"),
                Term::Word { token, prefix: false } => format!("\"{token}\""),
                Term::Phrase(toks) => format!("\"{}\"", toks.join(" ")),
            })
            .collect();
        parts.join(" AND ")
    }

    /// The `to_tsquery` text: terms joined by `&`, phrases by `<->`, prefixes `:*`.
    pub(crate) fn tsquery(&self) -> String {
        let parts: Vec<String> = self
            .terms
            .iter()
            .map(|t| match t {
                Term::Word { token, prefix: true } => format!("'{token}':*"),
                Term::Word { token, prefix: false } => format!("'{token}'"),
                Term::Phrase(toks) => {
                    let quoted: Vec<String> = toks.iter().map(|t| format!("'{t}'")).collect();
                    format!("({})", quoted.join(" <-> "))
                }
            })
            .collect();
        parts.join(" & ")
    }

    /// The token ranges of `toks` that this query's terms hit (for snippets): a word hits a
    /// token it equals (or, as a prefix, starts), a phrase its tokens in a row. Stemming on
    /// PostgreSQL may match more than this shows; a hit it cannot place is just not marked.
    fn hits(&self, toks: &[Token]) -> Vec<(usize, usize)> {
        let mut hits = Vec::new();
        for term in &self.terms {
            match term {
                Term::Word { token, prefix } => {
                    for (i, t) in toks.iter().enumerate() {
                        let hit = if *prefix {
                            t.text.starts_with(token.as_str())
                        } else {
                            t.text == *token
                        };
                        if hit {
                            hits.push((i, i + 1));
                        }
                    }
                }
                Term::Phrase(words) => {
                    for i in 0..toks.len().saturating_sub(words.len() - 1) {
                        if toks[i..i + words.len()].iter().zip(words).all(|(t, w)| t.text == *w) {
                            hits.push((i, i + words.len()));
                        }
                    }
                }
            }
        }
        hits.sort_unstable();
        hits
    }
}

/// Where a page of hits ends, to go on after it: the last hit's `(ts, conversation, seq)`
/// newest first, or how many hits came before by relevance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cursor {
    Newest { ts: i64, conversation: i64, seq: i64 },
    Relevance { offset: i64 },
}

/// A newest-first page's position, `(ts, conversation, seq)`, as a query binds it.
pub(crate) type Keyset = (Option<i64>, Option<i64>, Option<i64>);

/// Most hits a relevance search pages through.
pub const MAX_RELEVANCE_OFFSET: i64 = 1000;

impl Cursor {
    pub(crate) fn parse(text: Option<&str>, order: crate::SearchOrder) -> Result<Option<Cursor>> {
        let Some(text) = text else { return Ok(None) };
        let bad = || StoreError::BadRequest("not a cursor of this search".into());
        // A client's text, not only ours: the kind is one ASCII letter, whatever follows.
        let mut chars = text.chars();
        let kind = chars.next();
        let nums: Vec<i64> = chars
            .as_str()
            .split(':')
            .map(str::parse)
            .collect::<std::result::Result<_, _>>()
            .map_err(|_| bad())?;
        match (kind, nums.as_slice(), order) {
            (Some('n'), [ts, conversation, seq], crate::SearchOrder::Newest) => {
                Ok(Some(Cursor::Newest { ts: *ts, conversation: *conversation, seq: *seq }))
            }
            (Some('r'), [offset], crate::SearchOrder::Relevance)
                if (0..=MAX_RELEVANCE_OFFSET).contains(offset) =>
            {
                Ok(Some(Cursor::Relevance { offset: *offset }))
            }
            _ => Err(bad()),
        }
    }

    /// What a query binds for `cursor`: the keyset `(ts, conversation, seq)` to go on after
    /// (newest first; all `None` otherwise) and the offset (by relevance; 0 otherwise).
    pub(crate) fn bounds(cursor: Option<Cursor>) -> (Keyset, i64) {
        match cursor {
            Some(Cursor::Newest { ts, conversation, seq }) => {
                ((Some(ts), Some(conversation), Some(seq)), 0)
            }
            Some(Cursor::Relevance { offset }) => ((None, None, None), offset),
            None => ((None, None, None), 0),
        }
    }

    /// The `next` of a page of `n` hits (of `limit` asked) that ends at `last`.
    pub(crate) fn next(
        order: crate::SearchOrder,
        before: Option<Cursor>,
        n: usize,
        limit: u32,
        last: Option<&crate::SearchHit>,
    ) -> Option<String> {
        if n < limit as usize {
            return None;
        }
        let last = last?;
        match order {
            crate::SearchOrder::Newest => {
                Some(format!("n{}:{}:{}", last.ts, last.conversation.0, last.seq))
            }
            crate::SearchOrder::Relevance => {
                let offset = match before {
                    Some(Cursor::Relevance { offset }) => offset,
                    _ => 0,
                } + n as i64;
                (offset < MAX_RELEVANCE_OFFSET).then(|| format!("r{offset}"))
            }
        }
    }
}

/// A snippet of `text` around the query's first hit, as parts: `(text, hit)`, in order.
/// At most [`SNIPPET_CONTEXT`] characters on either side of the hits it shows, with `…` where
/// it cut.
pub fn snippet(text: &str, query: &Query) -> Vec<(String, bool)> {
    let chars: Vec<char> = text.chars().collect();
    let toks = tokens(text);
    let hits = query.hits(&toks);
    let ranges: Vec<(usize, usize)> =
        hits.iter().map(|&(a, b)| (toks[a].start, toks[b - 1].end)).collect();
    let first = ranges.first().map_or(0, |r| r.0);
    let from = first.saturating_sub(SNIPPET_CONTEXT);
    let to = (first + 2 * SNIPPET_CONTEXT).min(chars.len());
    let mut parts: Vec<(String, bool)> = Vec::new();
    let push = |s: String, hit: bool, parts: &mut Vec<(String, bool)>| {
        if s.is_empty() {
            return;
        }
        match parts.last_mut() {
            Some((last, h)) if *h == hit => last.push_str(&s),
            _ => parts.push((s, hit)),
        }
    };
    if from > 0 {
        push("…".to_owned(), false, &mut parts);
    }
    let mut at = from;
    for &(a, b) in &ranges {
        let (a, b) = (a.max(at), b.min(to));
        if a >= b {
            continue;
        }
        push(chars[at..a].iter().collect(), false, &mut parts);
        push(chars[a..b].iter().collect(), true, &mut parts);
        at = b;
    }
    if at < to {
        push(chars[at..to].iter().collect(), false, &mut parts);
    }
    if to < chars.len() {
        push("…".to_owned(), false, &mut parts);
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;
    use natter_proto::ConversationId;

    #[test]
    fn cursors_of_any_text_parse_or_are_refused() {
        use crate::SearchOrder::{Newest, Relevance};
        assert_eq!(
            Cursor::parse(Some("n5:2:7"), Newest).unwrap(),
            Some(Cursor::Newest { ts: 5, conversation: 2, seq: 7 })
        );
        assert_eq!(
            Cursor::parse(Some("r40"), Relevance).unwrap(),
            Some(Cursor::Relevance { offset: 40 })
        );
        // Found by schemathesis: a first character of more than one byte panicked the reader.
        for text in ["", "\u{9b}1", "µ5:2:7", "né:1:1", "n5:2", "r40", "x1"] {
            assert!(
                matches!(Cursor::parse(Some(text), Newest), Err(StoreError::BadRequest(_))),
                "{text:?}"
            );
        }
    }

    #[test]
    fn doc_ids_pack_conversation_and_seq_and_refuse_what_does_not_fit() {
        assert_eq!(doc_id(ConversationId(3), 9), Some((3 << 32) | 9));
        let last = doc_id(ConversationId((1 << 31) - 1), (1 << 32) - 1).expect("fits");
        assert_eq!((last >> 32, last & 0xffff_ffff), ((1 << 31) - 1, (1 << 32) - 1));
        assert_eq!(doc_id(ConversationId(1 << 31), 1), None);
        assert_eq!(doc_id(ConversationId(1), 1 << 32), None);
        assert_eq!(doc_id(ConversationId(-1), 1), None);
    }

    #[test]
    fn folding_drops_accents_and_case_and_spaces_cjk() {
        assert_eq!(index_text("Crème Brûlée, SVP!"), "creme brulee svp");
        assert_eq!(index_text("東京都に行く"), "東 京 都 に 行 く");
        assert_eq!(index_text("ｆｕｌｌｗｉｄｔｈ ①"), "fullwidth 1");
        assert_eq!(index_text("deploy-ready v2.1"), "deploy ready v2 1");
    }

    #[test]
    fn queries_parse_to_both_dialects() {
        let q = Query::parse(r#"Déplo* "ship it" 東京"#).unwrap();
        assert_eq!(q.fts5(), r#""deplo"* AND "ship it" AND "東 京""#);
        assert_eq!(q.tsquery(), "'deplo':* & ('ship' <-> 'it') & ('東' <-> '京')");
        for bad in ["", "  \"\" * ", &"x".repeat(MAX_QUERY_CHARS + 1)] {
            assert!(Query::parse(bad).is_err(), "{bad:?}");
        }
        let many = vec!["w"; MAX_TERMS + 1].join(" ");
        assert!(Query::parse(&many).is_err());
    }

    #[test]
    fn snippets_mark_the_hits_in_the_original_text() {
        let q = Query::parse("creme ship*").unwrap();
        let parts = snippet("La Crème is shipping today", &q);
        assert_eq!(
            parts,
            vec![
                ("La ".to_owned(), false),
                ("Crème".to_owned(), true),
                (" is ".to_owned(), false),
                ("shipping".to_owned(), true),
                (" today".to_owned(), false),
            ]
        );
        let long = format!("{} needle {}", "a ".repeat(100), "b ".repeat(100));
        let parts = snippet(&long, &Query::parse("needle").unwrap());
        assert_eq!(parts[0].0.chars().next(), Some('…'));
        assert!(parts.iter().any(|(t, hit)| *hit && t == "needle"));
        assert!(parts.last().unwrap().0.ends_with('…'));
    }
}

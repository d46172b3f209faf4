//! The `search` scenario (issue 15's benchmark): how long message searches take over a
//! large history, and how fast that history was appended.
//!
//! Setup: `--users` accounts and `--conversations` groups of `--members` each (members drawn
//! at random, seeded by `--seed`), then `--messages` messages posted over REST
//! (`POST /v1/conversations/{id}/entries`, `--post-concurrency` at a time), each to a random
//! group by a random member of it. Their words come from a synthetic vocabulary with Zipf
//! frequencies, like natural text: the most frequent word is in most messages, a word of
//! rank 10,000 in about one message in 10,000.
//!
//! Then searches, one at a time (their latency, not the server's search throughput), each by
//! a random user, newest first and a page of `--limit`, `--queries` of each class:
//! - `common`: one of the 10 most frequent words (in 10–95% of messages);
//! - `rare`: a word of rank 5,000–20,000 (tens of messages in a million);
//! - `prefix`: the first 3 letters of a word of rank 100–1,000 and `*`;
//! - `phrase`: two words in a row from a posted message, by a member of its conversation;
//! - `common in one conversation`: a common word and `conversation=` a group of the searcher;
//! - `common by relevance`: a common word, `order=relevance`.
//!
//! Checks: every phrase search finds its message's conversation among its hits or fills the
//! page, and no search fails.

use std::time::Instant;

use anyhow::{Context, bail};
use clap::Args;
use futures_util::StreamExt;
use natter_proto::rest::PostEntry;
use natter_proto::{ConversationId, NewEntry};
use serde_json::json;

use crate::Common;
use crate::api::{Account, Api};
use crate::scenarios::{accounts, note, run_id};
use crate::stats::{Summary, print_table};

#[derive(Args, Debug)]
pub(crate) struct SearchArgs {
    /// Messages to post before searching.
    #[arg(long, default_value_t = 1_000_000)]
    messages: usize,
    /// Groups the messages go to.
    #[arg(long, default_value_t = 3000)]
    conversations: usize,
    /// Accounts the groups' members are drawn from.
    #[arg(long, default_value_t = 200)]
    users: usize,
    /// Members of each group, owner included.
    #[arg(long, default_value_t = 5)]
    members: usize,
    /// Words in the vocabulary.
    #[arg(long, default_value_t = 20_000)]
    vocabulary: usize,
    /// Words per message, at least (and at most twice as many).
    #[arg(long, default_value_t = 6)]
    words: usize,
    /// Posts in flight at once.
    #[arg(long, default_value_t = 64)]
    post_concurrency: usize,
    /// Searches of each class.
    #[arg(long, default_value_t = 100)]
    queries: usize,
    /// Hits per page.
    #[arg(long, default_value_t = 20)]
    limit: u32,
    /// Seed of the members, messages and queries.
    #[arg(long, default_value_t = 15)]
    seed: u64,
}

/// The vocabulary: word `r` (0: the most frequent) and the cumulative Zipf weights.
struct Words {
    cumulative: Vec<f64>,
}

/// Two-letter syllables the words are spelled with.
const SYLLABLES: [&str; 20] = [
    "ka", "lo", "mi", "ne", "su", "ta", "ri", "po", "de", "fu", "ga", "hi", "jo", "be", "vu", "ze",
    "wa", "yo", "ci", "xu",
];

impl Words {
    fn new(n: usize) -> Words {
        let mut total = 0.0;
        let cumulative = (1..=n)
            .map(|rank| {
                total += 1.0 / rank as f64;
                total
            })
            .collect();
        Words { cumulative }
    }

    /// Word `rank` spelled: its base-20 digits as syllables, at least two.
    fn word(rank: usize) -> String {
        let (mut n, mut out) = (rank, Vec::new());
        loop {
            out.push(SYLLABLES[n % SYLLABLES.len()]);
            n /= SYLLABLES.len();
            if n == 0 && out.len() >= 2 {
                break;
            }
        }
        out.concat()
    }

    fn sample(&self, rng: &mut fastrand::Rng) -> usize {
        let total = self.cumulative[self.cumulative.len() - 1];
        let x = rng.f64() * total;
        self.cumulative.partition_point(|c| *c < x).min(self.cumulative.len() - 1)
    }
}

/// A posted message remembered for a phrase search: where, and two of its words in a row.
struct Sample {
    group: usize,
    phrase: String,
}

/// # `search`
pub(crate) async fn search(common: &Common, args: SearchArgs) -> anyhow::Result<bool> {
    if args.members < 2 || args.members > args.users || args.conversations == 0 {
        bail!("need 2 ≤ --members ≤ --users and --conversations ≥ 1");
    }
    if args.vocabulary < 20_000 {
        bail!("need --vocabulary ≥ 20000 (the rare class is ranks 5,000-20,000)");
    }
    let run_id = run_id(common);
    let api = Api::new(&common.servers[0])?;
    let mut rng = fastrand::Rng::with_seed(args.seed);
    let users = accounts(&api, common, &run_id, "s", args.users).await?;
    let rosters: Vec<Vec<usize>> = (0..args.conversations)
        .map(|_| {
            let mut all: Vec<usize> = (0..args.users).collect();
            rng.shuffle(&mut all);
            all.truncate(args.members);
            all
        })
        .collect();
    let t = Instant::now();
    let groups: Vec<ConversationId> =
        Api::each(rosters.iter().enumerate(), common.setup_concurrency * 4, |(g, roster)| {
            let members: Vec<Account> = roster[1..].iter().map(|&u| users[u].clone()).collect();
            let (owner, api) = (users[roster[0]].clone(), api.clone());
            let title = format!("{run_id} search {g}");
            async move { api.group(&owner, &title, &members).await }
        })
        .await
        .context("creating groups")?;
    note(format!("{} groups in {:.1} s", groups.len(), t.elapsed().as_secs_f64()));

    // The messages, made up front so that posting measures the server alone.
    let words = Words::new(args.vocabulary);
    let mut samples = Vec::new();
    let posts: Vec<(usize, usize, String)> = (0..args.messages)
        .map(|i| {
            let group = rng.usize(..groups.len());
            let sender = rosters[group][rng.usize(..args.members)];
            let n = rng.usize(args.words..=2 * args.words);
            let text: Vec<String> = (0..n).map(|_| Words::word(words.sample(&mut rng))).collect();
            if i.is_multiple_of(997) {
                let at = rng.usize(..n - 1);
                samples.push(Sample { group, phrase: format!("{} {}", text[at], text[at + 1]) });
            }
            (group, sender, text.join(" "))
        })
        .collect();
    let post = |(i, (group, sender, body)): (usize, (usize, usize, String))| {
        let api = api.clone();
        let token = users[sender].token.clone();
        let conv = groups[group];
        async move {
            let entry = PostEntry {
                client_msg_id: format!("s{i}"),
                entry: NewEntry::Message {
                    body,
                    reply_to: None,
                    attachments: Vec::new(),
                    mentions: Vec::new(),
                },
            };
            api.post_entry(&token, conv, &entry).await
        }
    };
    let t = Instant::now();
    let mut done = 0usize;
    let mut stream = futures_util::stream::iter(posts.into_iter().enumerate().map(post))
        .buffer_unordered(args.post_concurrency.max(1));
    while let Some(res) = stream.next().await {
        res.context("posting a message")?;
        done += 1;
        if done.is_multiple_of(100_000) {
            note(format!(
                "{done} messages posted ({:.0}/s)",
                done as f64 / t.elapsed().as_secs_f64()
            ));
        }
    }
    drop(stream);
    let post_secs = t.elapsed().as_secs_f64();
    let post_rate = args.messages as f64 / post_secs;
    note(format!("{} messages in {post_secs:.1} s ({post_rate:.0}/s)", args.messages));

    let classes =
        ["common", "rare", "prefix", "phrase", "common in one conversation", "common by relevance"];
    let mut rows = vec![
        (
            "messages / groups / users".to_owned(),
            format!(
                "{} / {} / {} ({} members each)",
                args.messages,
                groups.len(),
                args.users,
                args.members
            ),
        ),
        (
            "posted (REST, awaiting each commit)".to_owned(),
            format!("{post_rate:.0} msg/s ({post_secs:.1} s, {} in flight)", args.post_concurrency),
        ),
    ];
    let mut report = serde_json::Map::new();
    let mut violations = Vec::new();
    for (class, name) in classes.iter().enumerate() {
        let (mut lat, mut hits) = (Vec::new(), Vec::new());
        for _ in 0..args.queries {
            let mut user = rng.usize(..args.users);
            let mut params = vec![("limit", args.limit.to_string())];
            let mut expect = None;
            let q = match class {
                0 | 4 | 5 => Words::word(rng.usize(..10)),
                1 => Words::word(rng.usize(5_000..20_000)),
                2 => format!("{}*", &Words::word(rng.usize(100..1_000))[..3]),
                _ => {
                    let s = &samples[rng.usize(..samples.len())];
                    user = rosters[s.group][rng.usize(..args.members)];
                    expect = Some(groups[s.group]);
                    format!("\"{}\"", s.phrase)
                }
            };
            if class == 4 {
                let g = rng.usize(..groups.len());
                user = rosters[g][rng.usize(..args.members)];
                params.push(("conversation", groups[g].0.to_string()));
            }
            if class == 5 {
                params.push(("order", "relevance".to_owned()));
            }
            params.push(("q", q.clone()));
            let t = Instant::now();
            let page = api
                .search(&users[user].token, &params)
                .await
                .with_context(|| format!("searching {q}"))?;
            lat.push(t.elapsed().as_secs_f64() * 1000.0);
            hits.push(page.hits.len() as f64);
            if let Some(conv) = expect {
                let found = page.hits.iter().any(|h| h.conversation == conv);
                if !found && page.hits.len() < args.limit as usize {
                    violations.push(format!("{q} by a member of {conv} found nothing there"));
                }
            }
        }
        let summary = Summary::of_values(&mut lat);
        let mean_hits = hits.iter().sum::<f64>() / hits.len().max(1) as f64;
        rows.push(((*name).to_owned(), format!("{} ({mean_hits:.1} hits a page)", summary.cell())));
        report.insert((*name).to_owned(), json!({ "latency": summary, "mean_hits": mean_hits }));
    }
    let ok = violations.is_empty();
    rows.push((
        "checks (phrases found)".to_owned(),
        if ok { "passed".to_owned() } else { format!("{} violations", violations.len()) },
    ));
    for v in violations.iter().take(10) {
        eprintln!("violation: {v}");
    }
    print_table(common.json, "search: queries over a seeded history", &rows);
    if common.json {
        let obj = json!({
            "scenario": "search",
            "messages": args.messages,
            "conversations": groups.len(),
            "users": args.users,
            "post_rate": post_rate,
            "post_secs": post_secs,
            "queries": report,
            "n_violations": violations.len(),
            "violations": violations,
            "ok": ok,
        });
        println!("{obj}");
    }
    Ok(ok)
}

//! The store conformance suite: what every [`Store`] backend must do, written once against
//! the trait and instantiated per backend with `store_suite!` (STYLE.md section 9).
//!
//! It shows, through the trait only: unique handles (case-insensitive), device tokens and
//! revocation, one direct conversation per pair, groups and their member cap, G1 (`seq` is
//! assigned at commit, contiguous per conversation, and one submitter's appends commit in
//! submission order), G4 (idempotent appends per `(sender, conversation, client_msg_id)`),
//! membership checks, message state after edits, deletions and reactions, log paging, group
//! changes (roles, leaving, owner hand-off), invitations (a stranger added to a group is
//! invited, not made a member, until they accept; declining leaves nothing; one per group;
//! capped per invitee; re-inviting after a decline or a departure), cursor rules, conversation lists with keyset
//! paging, the commit feed (every committed entry, in commit order: where routing starts),
//! and `close` (pending commits flushed, later writes `Unavailable`, the feed ends).
//!
//! It runs against SQLite (a temp file) and PostgreSQL (a scratch database per test, created
//! from `TEST_POSTGRES_URL`; `scripts/test.sh` starts a server and sets it). Without that URL
//! the PostgreSQL tests say loudly that they skipped, and fail under `CI=true`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use natter_proto::{
    Ack, Committed, ConversationId, ConversationKind, Entry, EntryBody, ErrorCode, MessagePreview,
    NewEntry, PREVIEW_CHARS, ReactionSummary, Receipt, Role, Seq, UserId,
    rest::{ProfileUpdate, User},
};
use natter_store::postgres::PgStore;
use natter_store::sqlite::SqliteStore;
use natter_store::{
    Added, Append, CommitFeed, CursorUpdate, GroupChange, NewGroup, NewMedia, NewThumbnail, Page,
    PendingAck, Range, Result, Store, StoreLimits,
};
use tokio::sync::mpsc;

/// Instantiates every suite test for one backend. `$open` is an async fn
/// `(StoreLimits, CommitFeed) -> Option<(S, Guard)>` (`None`: the backend is not available
/// here and the test is skipped, loudly); the guard lives as long as the test (a temp dir, a
/// scratch database).
macro_rules! store_suite {
    ($backend:ident, $open:ident) => {
        store_suite!(@tests $backend, $open;
            create_user_rejects_duplicate_handles_case_insensitively,
            create_user_rejects_look_alike_handles,
            devices_authenticate_until_deleted,
            create_direct_is_one_per_pair_in_either_order,
            create_group_enforces_the_member_cap,
            appends_get_contiguous_seqs_and_are_idempotent,
            one_submitters_appends_commit_in_submission_order,
            concurrent_submitters_get_contiguous_seqs,
            non_member_append_is_not_found,
            edits_deletes_and_reactions_update_message_state,
            mentions_resolve_handles_and_ids_among_members,
            entries_pages_after_before_latest,
            change_group_checks_roles_and_hands_ownership_on,
            strangers_are_invited_and_contacts_added,
            accepting_makes_a_member_and_declining_leaves_nothing,
            accepting_checks_the_group_again,
            pending_invitations_are_capped_per_invitee,
            refusals_read_the_same_on_every_backend,
            set_cursors_is_monotonic_clamped_and_read_implies_delivered,
            conversations_most_recent_first_with_keyset_paging,
            memberships_list_every_conversation_of_the_user,
            summaries_name_the_peer_and_preview_the_newest_message,
            profiles_are_set_cleared_looked_up_and_searched_among_contacts,
            a_deleted_user_loses_logins_and_profile_and_later_the_handle,
            a_users_messages_and_media_are_listed_by_page_for_the_export,
            a_block_stops_new_conversations_adds_direct_writes_and_presence,
            groups_are_moderated_by_owner_and_admins,
            reports_keep_what_was_reported_and_admins_act_on_them,
            the_push_queue_coalesces_leases_and_clears_on_read,
            digests_go_to_verified_addresses_with_the_unread_conversations,
            search_matches_words_phrases_prefixes_across_scripts_and_accents,
            search_follows_edits_and_deletions_filters_and_pages_without_repeats,
            search_shows_only_what_the_user_may_read,
            commit_feed_carries_every_committed_entry_in_commit_order,
            close_flushes_then_writes_fail_unavailable,
            media_round_trip_and_quota,
            appends_carry_the_senders_own_media,
            media_access_follows_ownership_and_membership,
            collect_media_keeps_what_is_attached_and_shared,
        );
    };
    (@tests $backend:ident, $open:ident; $($name:ident,)*) => {
        mod $backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(fixture) = super::Fixture::open(super::$open).await else {
                        return;
                    };
                    super::within(super::$name(fixture)).await;
                }
            )*
        }
    };
}

store_suite!(sqlite, open_sqlite);
store_suite!(postgres, open_postgres);

async fn open_sqlite(limits: StoreLimits, feed: CommitFeed) -> Option<(SqliteStore, Guard)> {
    let (store, dir) = SqliteStore::temporary(limits, feed).expect("temporary sqlite store");
    Some((store, Box::new(dir)))
}

/// A PostgreSQL store on a scratch database of its own, dropped after the test; `None` (after
/// saying so loudly) when `TEST_POSTGRES_URL` is unset, a failure under `CI=true`.
async fn open_postgres(limits: StoreLimits, feed: CommitFeed) -> Option<(PgStore, Guard)> {
    let (store, db) = scratch_postgres(limits, feed).await?;
    Some((store, Box::new(db)))
}

async fn scratch_postgres(limits: StoreLimits, feed: CommitFeed) -> Option<(PgStore, ScratchDb)> {
    let Ok(url) = std::env::var("TEST_POSTGRES_URL") else {
        let msg = "TEST_POSTGRES_URL is not set: the PostgreSQL store suite did NOT run \
                   (scripts/test.sh starts PostgreSQL and sets it)";
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{msg}; CI=true requires every backend");
        }
        // Straight to stderr, past the test harness's output capture.
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), "\n!!! SKIPPED: {msg}\n");
        return None;
    };
    let admin: tokio_postgres::Config = url.parse().expect("TEST_POSTGRES_URL parses");
    let name = format!("natter_suite_{}", uuid::Uuid::now_v7().simple());
    pg_admin(&admin, &format!("CREATE DATABASE {name}")).await;
    let mut config = admin.clone();
    config.dbname(&name);
    let store = PgStore::open(config, limits, feed).await.expect("postgres store");
    Some((store, ScratchDb { admin, name }))
}

async fn pg_admin(config: &tokio_postgres::Config, sql: &str) {
    let (client, conn) = config.connect(tokio_postgres::NoTls).await.expect("connect to postgres");
    let conn = tokio::spawn(conn);
    client.batch_execute(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    drop(client);
    let _ = conn.await;
}

/// A scratch database, dropped (with its connections) when the test ends.
struct ScratchDb {
    admin: tokio_postgres::Config,
    name: String,
}

impl Drop for ScratchDb {
    fn drop(&mut self) {
        let admin = self.admin.clone();
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        // Drop runs inside the test's runtime: the clean-up gets a thread and runtime of its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build();
            if let Ok(rt) = rt {
                rt.block_on(pg_admin(&admin, &sql));
            }
        })
        .join();
    }
}

// ---- harness ----

/// Keeps a backend's scratch resources alive for the test.
type Guard = Box<dyn Send>;

/// The member cap every suite store gets: small, so that the cap is easy to reach.
const MAX_GROUP_MEMBERS: u32 = 4;
/// The cap on one user's pending invitations, small for the same reason.
const MAX_PENDING_INVITATIONS: u32 = 3;

fn limits() -> StoreLimits {
    StoreLimits {
        max_group_members: MAX_GROUP_MEMBERS,
        max_pending_invitations: MAX_PENDING_INVITATIONS,
        ..StoreLimits::default()
    }
}
/// How long one test may take before it fails (a hung store must not hang the suite).
const TEST_TIMEOUT: Duration = Duration::from_secs(20);

struct Fixture<S> {
    store: Arc<S>,
    /// The commit feed: a large bound so that tests which do not read it never block the
    /// writer (the channel allocates as it fills, not up front).
    feed_rx: mpsc::Receiver<Vec<Committed>>,
    _guard: Guard,
}

impl<S: Store> Fixture<S> {
    async fn open<F, Fut>(open: F) -> Option<Fixture<S>>
    where
        F: FnOnce(StoreLimits, CommitFeed) -> Fut,
        Fut: Future<Output = Option<(S, Guard)>>,
    {
        let (feed_tx, feed_rx) = mpsc::channel(1 << 20);
        let (store, guard) = open(limits(), feed_tx).await?;
        Some(Fixture { store: Arc::new(store), feed_rx, _guard: guard })
    }
}

async fn within<F: Future<Output = ()>>(test: F) {
    tokio::time::timeout(TEST_TIMEOUT, test).await.expect("the test finished in time");
}

async fn user<S: Store>(s: &S, handle: &str) -> UserId {
    s.create_user(handle, &format!("hash-of-{handle}")).await.expect("create user")
}

async fn users<S: Store, const N: usize>(s: &S, handles: [&str; N]) -> [UserId; N] {
    let mut out = [UserId(0); N];
    for (i, h) in handles.iter().enumerate() {
        out[i] = user(s, h).await;
    }
    out
}

/// Makes `user` a contact of each of `others` (a direct conversation each): adding them to a
/// group of `user`'s then adds them instead of inviting them.
async fn contacts<S: Store>(s: &S, user: UserId, others: &[UserId]) {
    for &other in others {
        s.create_direct(user, other).await.expect("direct");
    }
}

/// Adds a contact of `actor` to a group: the ack of `member_added` (an invitation panics).
async fn add_member<S: Store>(
    s: &S,
    actor: UserId,
    conv: ConversationId,
    user: UserId,
    role: Role,
) -> Result<Ack> {
    match s.add_member(actor, conv, user, role).await? {
        Added::Member(ack) => Ok(ack),
        Added::Invited(inv) => panic!("{user:?} is no contact of {actor:?}: invited, {inv:?}"),
    }
}

/// Invites a stranger to a group (an add that made a member panics).
async fn invite<S: Store>(
    s: &S,
    actor: UserId,
    conv: ConversationId,
    user: UserId,
    role: Role,
) -> Result<natter_proto::Invitation> {
    match s.add_member(actor, conv, user, role).await? {
        Added::Invited(inv) => Ok(inv),
        Added::Member(ack) => panic!("{user:?} is a contact of {actor:?}: added, {ack:?}"),
    }
}

/// A group whose members are all contacts of the owner (an invitation panics).
async fn group<S: Store>(s: &S, owner: UserId, title: &str, members: &[UserId]) -> ConversationId {
    let NewGroup { id, invitations } = s.create_group(owner, title, members).await.expect("group");
    assert!(invitations.is_empty(), "invited instead of added: {invitations:?}");
    id
}

fn msg(body: &str) -> NewEntry {
    NewEntry::Message {
        body: body.to_owned(),
        reply_to: None,
        attachments: Vec::new(),
        mentions: Vec::new(),
    }
}

fn append_of(conv: ConversationId, sender: UserId, cmid: &str, entry: NewEntry) -> Append {
    Append { conversation: conv, sender, client_msg_id: cmid.to_owned(), entry }
}

/// Submits one append and waits for its commit. An error may come from either stage.
async fn append<S: Store>(
    s: &S,
    conv: ConversationId,
    sender: UserId,
    cmid: &str,
    entry: NewEntry,
) -> Result<Ack> {
    s.submit_append(append_of(conv, sender, cmid, entry)).await?.wait().await
}

async fn send<S: Store>(
    s: &S,
    conv: ConversationId,
    sender: UserId,
    cmid: &str,
    body: &str,
) -> Ack {
    append(s, conv, sender, cmid, msg(body)).await.unwrap_or_else(|e| panic!("append {cmid}: {e}"))
}

fn code<T: std::fmt::Debug>(res: Result<T>) -> ErrorCode {
    match res {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e.code(),
    }
}

/// The whole log of a conversation, oldest first.
async fn log<S: Store>(s: &S, conv: ConversationId) -> Vec<Entry> {
    let page = s.entries(conv, Range::After(0), 10_000).await.expect("entries");
    assert!(!page.has_more);
    page.entries
}

fn seqs(entries: &[Entry]) -> Vec<Seq> {
    entries.iter().map(|e| e.seq).collect()
}

fn assert_contiguous(entries: &[Entry], from: Seq, to: Seq) {
    assert_eq!(seqs(entries), (from..=to).collect::<Vec<_>>(), "expected seq {from}..={to}");
}

async fn last_seq<S: Store>(s: &S, user: UserId, conv: ConversationId) -> Seq {
    s.conversation(user, conv).await.expect("conversation").last_seq
}

fn message_body(e: &Entry) -> &str {
    match &e.body {
        EntryBody::Message { body, .. } => body,
        other => panic!("seq {} is not a message: {other:?}", e.seq),
    }
}

// ---- accounts and devices ----

async fn create_user_rejects_duplicate_handles_case_insensitively<S: Store>(f: Fixture<S>) {
    let s = &*f.store;
    let alice = s.create_user("Alice", "h1").await.expect("alice");
    for taken in ["Alice", "alice", "ALICE", "aLiCe"] {
        assert_eq!(code(s.create_user(taken, "h2").await), ErrorCode::Conflict, "{taken}");
    }
    let bob = s.create_user("bob", "h3").await.expect("bob");
    assert_ne!(alice, bob);

    let rec = s.user_by_handle("Alice").await.expect("read").expect("alice exists");
    assert_eq!((rec.id, rec.handle.as_str(), rec.password_hash.as_str()), (alice, "Alice", "h1"));
    assert!(s.user_by_handle("nobody").await.expect("read").is_none());
    assert_eq!(s.user_handle(bob).await.expect("read").as_deref(), Some("bob"));
    assert_eq!(s.user_handle(UserId(999_999)).await.expect("read"), None);
}

async fn create_user_rejects_look_alike_handles<S: Store>(f: Fixture<S>) {
    let s = &*f.store;
    let alice = s.create_user("alice", "h1").await.expect("alice");
    // Cyrillic а and А, fullwidth letters, a digit for a letter: the same UTS #39 skeleton.
    let twins = ["\u{430}lice", "\u{410}LICE", "\u{ff41}\u{ff4c}\u{ff49}\u{ff43}\u{ff45}"];
    for twin in twins {
        assert_eq!(code(s.create_user(twin, "h2").await), ErrorCode::Conflict, "{twin}");
    }
    s.create_user("b0b", "h3").await.expect("b0b");
    assert_eq!(code(s.create_user("bob", "h4").await), ErrorCode::Conflict);
    // Different handles still register, and the original is intact.
    s.create_user("alicia", "h5").await.expect("alicia");
    let rec = s.user_by_handle("alice").await.expect("read").expect("alice exists");
    assert_eq!((rec.id, rec.password_hash.as_str()), (alice, "h1"));
    assert!(s.user_by_handle("\u{430}lice").await.expect("read").is_none());
}

async fn devices_authenticate_until_deleted<S: Store>(f: Fixture<S>) {
    let s = &*f.store;
    let [alice, bob] = users(s, ["alice", "bob"]).await;
    let (t1, t2, t3) = ([1u8; 32], [2u8; 32], [3u8; 32]);
    let d1 = s.create_device(alice, "phone", t1).await.expect("d1");
    let d2 = s.create_device(alice, "laptop", t2).await.expect("d2");
    let d3 = s.create_device(bob, "phone", t3).await.expect("d3");
    assert!(d1 != d2 && d2 != d3 && d1 != d3);

    let p1 = s.authenticate(t1).await.expect("auth").expect("t1 valid");
    assert_eq!((p1.user_id, p1.device_id), (alice, d1));
    let p3 = s.authenticate(t3).await.expect("auth").expect("t3 valid");
    assert_eq!((p3.user_id, p3.device_id), (bob, d3));
    assert_eq!(s.authenticate([9u8; 32]).await.expect("auth"), None);

    s.delete_device(t1).await.expect("logout");
    assert_eq!(s.authenticate(t1).await.expect("auth"), None);
    // The user's other device stays logged in.
    let p2 = s.authenticate(t2).await.expect("auth").expect("t2 valid");
    assert_eq!((p2.user_id, p2.device_id), (alice, d2));
    // Revoking an unknown or already revoked token is not an error.
    s.delete_device(t1).await.expect("second logout");
    s.delete_device([9u8; 32]).await.expect("unknown token");
}

// ---- conversations ----

async fn create_direct_is_one_per_pair_in_either_order<S: Store>(f: Fixture<S>) {
    let s = &*f.store;
    let [a, b, c] = users(s, ["a", "b", "c"]).await;
    let (ab, created) = s.create_direct(a, b).await.expect("create");
    assert!(created);
    assert_eq!(s.create_direct(a, b).await.expect("again"), (ab, false));
    assert_eq!(s.create_direct(b, a).await.expect("reversed"), (ab, false));
    let (ac, created) = s.create_direct(c, a).await.expect("other pair");
    assert!(created);
    assert_ne!(ab, ac);

    // Asking again appended nothing: the log is the one `created` entry.
    let entries = log(s, ab).await;
    assert_contiguous(&entries, 1, 1);
    assert_eq!(entries[0].sender, a);
    assert_eq!(entries[0].client_msg_id, None);
    assert_eq!(entries[0].state, None);
    assert_eq!(
        entries[0].body,
        EntryBody::Created {
            conversation_kind: ConversationKind::Direct,
            title: None,
            members: vec![a, b],
        }
    );

    for u in [a, b] {
        let sum = s.conversation(u, ab).await.expect("member sees it");
        assert_eq!(
            (sum.id, sum.kind, sum.title.as_deref(), sum.role, sum.last_seq),
            (ab, ConversationKind::Direct, None, Role::Member, 1)
        );
        assert_eq!(s.role(u, ab).await.expect("role"), Some(Role::Member));
    }
    assert_eq!(code(s.conversation(c, ab).await), ErrorCode::NotFound);
    assert_eq!(s.role(c, ab).await.expect("role"), None);
    let ids: BTreeSet<UserId> = s.member_ids(ab).await.expect("ids").into_iter().collect();
    assert_eq!(ids, BTreeSet::from([a, b]));

    assert_eq!(code(s.create_direct(a, a).await), ErrorCode::BadRequest);
    assert_eq!(code(s.create_direct(a, UserId(999_999)).await), ErrorCode::NotFound);
}

async fn create_group_enforces_the_member_cap<S: Store>(f: Fixture<S>) {
    let s = &*f.store;
    let [o, a, b, c, d] = users(s, ["o", "a", "b", "c", "d"]).await;
    contacts(s, o, &[a, b, c, d]).await;
    let g = group(s, o, "team", &[a, b]).await;
    let entries = log(s, g).await;
    assert_contiguous(&entries, 1, 1);
    assert_eq!(entries[0].sender, o);
    assert_eq!(
        entries[0].body,
        EntryBody::Created {
            conversation_kind: ConversationKind::Group,
            title: Some("team".to_owned()),
            members: vec![o, a, b],
        }
    );
    let sum = s.conversation(o, g).await.expect("summary");
    assert_eq!(
        (sum.kind, sum.title.as_deref(), sum.role, sum.last_seq),
        (ConversationKind::Group, Some("team"), Role::Owner, 1)
    );
    assert_eq!(s.role(a, g).await.expect("role"), Some(Role::Member));
    let members = s.members(g).await.expect("members");
    let roles: BTreeMap<UserId, (String, Role)> =
        members.iter().map(|m| (m.user_id, (m.handle.clone(), m.role))).collect();
    assert_eq!(
        roles,
        BTreeMap::from([
            (o, ("o".to_owned(), Role::Owner)),
            (a, ("a".to_owned(), Role::Member)),
            (b, ("b".to_owned(), Role::Member)),
        ])
    );

    // Exactly at the cap (owner included) is allowed; one more is a conflict.
    let full = group(s, o, "full", &[a, b, c]).await;
    assert_eq!(s.member_ids(full).await.expect("ids").len(), 4);
    assert_eq!(code(s.create_group(o, "over", &[a, b, c, d]).await), ErrorCode::Conflict);
    assert_eq!(code(s.create_group(o, "ghost", &[a, UserId(999_999)]).await), ErrorCode::NotFound);
    // Adding to a full group is a conflict too.
    assert_eq!(code(add_member(s, o, full, d, Role::Member).await), ErrorCode::Conflict);
    assert_eq!(last_seq(s, o, full).await, 1);
}

// ---- appends ----

async fn appends_get_contiguous_seqs_and_are_idempotent<S: Store>(f: Fixture<S>) {
    let s = &*f.store;
    let [a, b, c] = users(s, ["a", "b", "c"]).await;
    let (ab, _) = s.create_direct(a, b).await.expect("direct");
    let (ac, _) = s.create_direct(a, c).await.expect("direct");

    let m1 = send(s, ab, a, "m1", "one").await;
    let m2 = send(s, ab, a, "m2", "two").await;
    assert_eq!((m1.conversation, m1.seq), (ab, 2));
    assert_eq!((m2.conversation, m2.seq), (ab, 3));
    assert_eq!(m1.client_msg_id.as_deref(), Some("m1"));
    assert_ne!(m1.id, m2.id);

    // A retry returns the original ack, whatever it carries this time.
    assert_eq!(send(s, ab, a, "m1", "one again").await, m1);
    assert_eq!(append(s, ab, a, "m2", NewEntry::Delete { target: 2 }).await.expect("retry"), m2);
    // The key is per sender and per conversation.
    let b1 = send(s, ab, b, "m1", "bob's m1").await;
    assert_eq!(b1.seq, 4);
    let c1 = send(s, ac, a, "m1", "other conversation").await;
    assert_eq!((c1.conversation, c1.seq), (ac, 2));

    let entries = log(s, ab).await;
    assert_contiguous(&entries, 1, 4);
    for (ack, sender, body) in [(&m1, a, "one"), (&m2, a, "two"), (&b1, b, "bob's m1")] {
        let e = &entries[ack.seq as usize - 1];
        assert_eq!((&e.id, e.ts, e.sender), (&ack.id, ack.ts, sender));
        assert_eq!(e.client_msg_id, ack.client_msg_id);
        assert_eq!(message_body(e), body);
        let state = e.state.as_ref().expect("messages carry their state");
        assert_eq!((state.body.as_str(), state.edited_seq, state.deleted), (body, None, false));
    }
    let sum = s.conversation(b, ab).await.expect("summary");
    assert_eq!(sum.last_seq, 4);
    assert_eq!(sum.last_activity, b1.ts);
}

async fn one_submitters_appends_commit_in_submission_order<S: Store>(f: Fixture<S>) {
    let s = &*f.store;
    let [a, b] = users(s, ["a", "b"]).await;
    let (ab, _) = s.create_direct(a, b).await.expect("direct");
    const N: usize = 200;
    let mut pending: Vec<PendingAck> = Vec::with_capacity(N);
    for i in 0..N {
        let app = append_of(ab, a, &format!("m{i}"), msg(&format!("body {i}")));
        pending.push(s.submit_append(app).await.expect("queued"));
    }
    let mut acks = Vec::with_capacity(N);
    for p in pending {
        acks.push(p.wait().await.expect("committed"));
    }
    let got: Vec<Seq> = acks.iter().map(|a| a.seq).collect();
    assert_eq!(got, (2..=N as Seq + 1).collect::<Vec<_>>());
    let entries = log(s, ab).await;
    assert_contiguous(&entries, 1, N as Seq + 1);
    for (i, e) in entries[1..].iter().enumerate() {
        assert_eq!(e.client_msg_id.as_deref(), Some(format!("m{i}").as_str()));
        assert_eq!(message_body(e), format!("body {i}"));
    }
}

async fn concurrent_submitters_get_contiguous_seqs<S: Store>(f: Fixture<S>) {
    let s = &*f.store;
    let members = users(s, ["a", "b", "c", "d"]).await;
    contacts(s, members[0], &members[1..]).await;
    let g = group(s, members[0], "busy", &members[1..]).await;
    const PER: usize = 100;
    let mut tasks = Vec::new();
    for (k, &u) in members.iter().enumerate() {
        let store = f.store.clone();
        tasks.push(tokio::spawn(async move {
            let mut pending = Vec::with_capacity(PER);
            for i in 0..PER {
                let app = append_of(g, u, &format!("{k}-{i}"), msg(&format!("{k} says {i}")));
                pending.push(store.submit_append(app).await.expect("queued"));
            }
            let mut acks = Vec::with_capacity(PER);
            for p in pending {
                acks.push(p.wait().await.expect("committed"));
            }
            acks
        }));
    }
    let mut all = Vec::new();
    for (k, t) in tasks.into_iter().enumerate() {
        let acks = t.await.expect("submitter task");
        let seqs: Vec<Seq> = acks.iter().map(|a| a.seq).collect();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "submitter {k}'s seqs follow its submission order: {seqs:?}"
        );
        all.extend(seqs);
    }
    all.sort_unstable();
    let n = (members.len() * PER) as Seq;
    assert_eq!(all, (2..=n + 1).collect::<Vec<_>>(), "no gap, no duplicate");
    let entries = log(s, g).await;
    assert_contiguous(&entries, 1, n + 1);
    let keys: BTreeSet<(UserId, Option<String>)> =
        entries.iter().map(|e| (e.sender, e.client_msg_id.clone())).collect();
    assert_eq!(keys.len(), entries.len());
}

async fn non_member_append_is_not_found<S: Store>(f: Fixture<S>) {
    let s = &*f.store;
    let [a, b, c] = users(s, ["a", "b", "c"]).await;
    let (ab, _) = s.create_direct(a, b).await.expect("direct");
    send(s, ab, a, "m1", "hi").await;
    assert_eq!(code(append(s, ab, c, "x", msg("intrude")).await), ErrorCode::NotFound);
    // Not even by reusing a member's client_msg_id.
    assert_eq!(code(append(s, ab, c, "m1", msg("intrude")).await), ErrorCode::NotFound);
    assert_eq!(
        code(append(s, ConversationId(999_999), a, "y", msg("void")).await),
        ErrorCode::NotFound
    );
    // A member removed from a group can no longer append.
    contacts(s, a, &[c]).await;
    let g = group(s, a, "g", &[c]).await;
    send(s, g, c, "c1", "before").await;
    s.change_group(a, g, GroupChange::RemoveMember { user: c }).await.expect("remove");
    assert_eq!(code(append(s, g, c, "c2", msg("after")).await), ErrorCode::NotFound);
    assert_eq!(last_seq(s, a, ab).await, 2);
    assert_eq!(last_seq(s, a, g).await, 3);
    // A failed append consumed no seq: the next one is contiguous.
    assert_eq!(send(s, ab, b, "b1", "next").await.seq, 3);
}

async fn edits_deletes_and_reactions_update_message_state<S: Store>(f: Fixture<S>) {
    let s = &*f.store;
    let [a, b] = users(s, ["a", "b"]).await;
    let (ab, _) = s.create_direct(a, b).await.expect("direct");
    let m = send(s, ab, a, "m", "first").await; // 2
    let other = send(s, ab, b, "o", "other").await; // 3
    let edit = NewEntry::Edit { target: m.seq, body: "second".to_owned() };
    let e1 = append(s, ab, a, "e1", edit).await.expect("edit"); // 4
    let react = |emoji: &str, remove: bool| NewEntry::Reaction {
        target: m.seq,
        emoji: emoji.to_owned(),
        remove,
    };
    append(s, ab, b, "r1", react("+1", false)).await.expect("react"); // 5
    append(s, ab, a, "r2", react("+1", false)).await.expect("react"); // 6
    append(s, ab, a, "r3", react("party", false)).await.expect("react"); // 7

    // Only the sender edits or deletes; anyone in the conversation reacts.
    let bad_edit = NewEntry::Edit { target: m.seq, body: "hijack".to_owned() };
    assert_eq!(code(append(s, ab, b, "x1", bad_edit).await), ErrorCode::Forbidden);
    assert_eq!(
        code(append(s, ab, b, "x2", NewEntry::Delete { target: m.seq }).await),
        ErrorCode::Forbidden
    );
    // Targets must be messages of this conversation.
    let edit_created = NewEntry::Edit { target: 1, body: "no".to_owned() };
    assert_eq!(code(append(s, ab, a, "x3", edit_created).await), ErrorCode::BadRequest);
    let react_missing = NewEntry::Reaction { target: 99, emoji: "+1".to_owned(), remove: false };
    assert_eq!(code(append(s, ab, a, "x4", react_missing).await), ErrorCode::BadRequest);
    let reply_missing = NewEntry::Message {
        body: "re".to_owned(),
        reply_to: Some(99),
        attachments: Vec::new(),
        mentions: Vec::new(),
    };
    assert_eq!(code(append(s, ab, a, "x5", reply_missing).await), ErrorCode::BadRequest);

    let state_of = |entries: &[Entry], seq: Seq| {
        entries[seq as usize - 1].state.clone().expect("messages carry state")
    };
    let entries = log(s, ab).await;
    assert_contiguous(&entries, 1, 7);
    let st = state_of(&entries, m.seq);
    assert_eq!((st.body.as_str(), st.edited_seq, st.deleted), ("second", Some(e1.seq), false));
    let mut reactions = st.reactions.clone();
    reactions.sort_by(|x, y| x.emoji.cmp(&y.emoji));
    assert_eq!(
        reactions,
        vec![
            ReactionSummary { emoji: "+1".to_owned(), users: vec![b, a] },
            ReactionSummary { emoji: "party".to_owned(), users: vec![a] },
        ]
    );
    // The log keeps what happened; only messages carry a state.
    assert_eq!(message_body(&entries[1]), "first");
    assert_eq!(entries[3].body, EntryBody::Edit { target: m.seq, body: "second".to_owned() });
    assert!(entries[3..].iter().all(|e| e.state.is_none()));
    assert_eq!(state_of(&entries, other.seq).body, "other");

    append(s, ab, a, "r4", react("+1", true)).await.expect("unreact"); // 8
    let st = state_of(&log(s, ab).await, m.seq);
    let mut reactions = st.reactions;
    reactions.sort_by(|x, y| x.emoji.cmp(&y.emoji));
    assert_eq!(
        reactions,
        vec![
            ReactionSummary { emoji: "+1".to_owned(), users: vec![b] },
            ReactionSummary { emoji: "party".to_owned(), users: vec![a] },
        ]
    );

    let reply = NewEntry::Message {
        body: "re: first".to_owned(),
        reply_to: Some(m.seq),
        attachments: Vec::new(),
        mentions: Vec::new(),
    };
    let r = append(s, ab, b, "reply", reply).await.expect("reply"); // 9
    let del = append(s, ab, a, "d1", NewEntry::Delete { target: m.seq }).await.expect("delete"); // 10
    assert_eq!((r.seq, del.seq), (9, 10));
    let entries = log(s, ab).await;
    assert_contiguous(&entries, 1, 10);
    let st = state_of(&entries, m.seq);
    assert!(st.deleted);
    assert_eq!(st.body, "");
    assert!(st.reactions.is_empty(), "a tombstone keeps no reactions");
    assert_eq!(
        entries[8].body,
        EntryBody::Message {
            body: "re: first".to_owned(),
            reply_to: Some(m.seq),
            attachments: Vec::new(),
            mentions: Vec::new(),
        }
    );
    // A tombstone cannot be edited or reacted to again.
    let late_edit = NewEntry::Edit { target: m.seq, body: "back".to_owned() };
    assert_eq!(code(append(s, ab, a, "x6", late_edit).await), ErrorCode::Conflict);
    assert_eq!(code(append(s, ab, b, "x7", react("+1", false)).await), ErrorCode::Conflict);
    // Refused appends committed nothing, so their client_msg_id is still free.
    let free = send(s, ab, b, "x1", "reuse").await;
    assert_eq!(free.seq, 11);
}

async fn mentions_resolve_handles_and_ids_among_members<S: Store>(f: Fixture<S>) {
    let s = &*f.store;
    let [ann, bob, cy, dee, eve] = users(s, ["ann", "Bob", "cy", "dee", "eve"]).await;
    contacts(s, ann, &[bob, cy, dee, eve]).await;
    let g = group(s, ann, "team", &[bob, cy, dee]).await;
    let mentions_of = |entry: &Entry| match &entry.body {
        EntryBody::Message { mentions, .. } => mentions.clone(),
        other => panic!("not a message: {other:?}"),
    };
    // `@bob` in any case, `@cy.` at a sentence's end, dee by id; eve is no member, a mail
    // address mentions nobody, and `@nobody` is nobody.
    let entry = NewEntry::Message {
        body: "hi @BOB and @cy. mail ann@example.com, @nobody, @eve".to_owned(),
        reply_to: None,
        attachments: Vec::new(),
        mentions: vec![dee, eve, dee],
    };
    let ack = append(s, g, ann, "m1", entry).await.expect("append");
    let entries = log(s, g).await;
    let sent = entries.iter().find(|e| e.seq == ack.seq).expect("the message");
    let mut want = vec![bob, cy, dee];
    want.sort_unstable();
    assert_eq!(mentions_of(sent), want);
    // Nothing to resolve: no mentions.
    let plain = send(s, g, ann, "m2", "no one @ all").await;
    let entries = log(s, g).await;
    assert!(mentions_of(entries.iter().find(|e| e.seq == plain.seq).expect("m2")).is_empty());
    // Too many ids is a bad request.
    let many = NewEntry::Message {
        body: String::new(),
        reply_to: None,
        attachments: Vec::new(),
        mentions: (0..51).map(UserId).collect(),
    };
    assert_eq!(code(append(s, g, ann, "m3", many).await), ErrorCode::BadRequest);
}

async fn entries_pages_after_before_latest<S: Store>(f: Fixture<S>) {
    let s = &*f.store;
    let [a, b] = users(s, ["a", "b"]).await;
    let (ab, _) = s.create_direct(a, b).await.expect("direct");
    for i in 2..=10 {
        send(s, ab, a, &format!("m{i}"), &format!("body {i}")).await;
    }
    let page = |range: Range, limit: u32| async move {
        let Page { entries, has_more } = s.entries(ab, range, limit).await.expect("page");
        (seqs(&entries), has_more)
    };
    let r = |lo: Seq, hi: Seq| (lo..=hi).collect::<Vec<_>>();
    assert_eq!(page(Range::After(0), 4).await, (r(1, 4), true));
    assert_eq!(page(Range::After(4), 4).await, (r(5, 8), true));
    assert_eq!(page(Range::After(6), 4).await, (r(7, 10), false));
    assert_eq!(page(Range::After(8), 4).await, (r(9, 10), false));
    assert_eq!(page(Range::After(10), 4).await, (vec![], false));
    assert_eq!(page(Range::Before(5), 3).await, (r(2, 4), true));
    assert_eq!(page(Range::Before(4), 3).await, (r(1, 3), false));
    assert_eq!(page(Range::Before(11), 10).await, (r(1, 10), false));
    assert_eq!(page(Range::Before(1), 3).await, (vec![], false));
    assert_eq!(page(Range::Latest, 3).await, (r(8, 10), true));
    assert_eq!(page(Range::Latest, 10).await, (r(1, 10), false));
    assert_eq!(page(Range::Latest, 50).await, (r(1, 10), false));

    // Walking backwards from the latest page visits every entry once.
    let mut seen = Vec::new();
    let mut range = Range::Latest;
    loop {
        let p = s.entries(ab, range, 3).await.expect("page");
        let mut chunk = seqs(&p.entries);
        chunk.extend(seen);
        seen = chunk;
        if !p.has_more {
            break;
        }
        range = Range::Before(seen[0]);
    }
    assert_eq!(seen, r(1, 10));
}

// ---- groups ----

async fn change_group_checks_roles_and_hands_ownership_on<S: Store>(f: Fixture<S>) {
    let s = &*f.store;
    let [o, a, b, c, d] = users(s, ["o", "a", "b", "c", "d"]).await;
    contacts(s, o, &[a, b, c]).await;
    contacts(s, a, &[c]).await;
    let g = group(s, o, "g", &[a, b]).await; // 1
    let add = |actor: UserId, user: UserId, role: Role| add_member(s, actor, g, user, role);

    // Members change nothing.
    assert_eq!(code(add(a, c, Role::Member).await), ErrorCode::Forbidden);
    let title = |t: &str| GroupChange::SetTitle { title: t.to_owned() };
    assert_eq!(code(s.change_group(a, g, title("mine")).await), ErrorCode::Forbidden);
    let set_role = |user: UserId, role: Role| GroupChange::SetRole { user, role };
    assert_eq!(code(s.change_group(a, g, set_role(b, Role::Admin)).await), ErrorCode::Forbidden);

    // Only the owner changes roles; ownership is never given, only handed on by leaving.
    let ack = s.change_group(o, g, set_role(a, Role::Admin)).await.expect("promote"); // 2
    assert_eq!(ack.seq, 2);
    assert_eq!(s.role(a, g).await.expect("role"), Some(Role::Admin));
    assert_eq!(code(s.change_group(o, g, set_role(b, Role::Owner)).await), ErrorCode::BadRequest);
    assert_eq!(code(s.change_group(o, g, set_role(o, Role::Member)).await), ErrorCode::BadRequest);
    assert_eq!(code(s.change_group(o, g, set_role(c, Role::Admin)).await), ErrorCode::NotFound);
    assert_eq!(
        code(s.change_group(a, g, set_role(b, Role::Admin)).await),
        ErrorCode::Forbidden,
        "admins do not change roles"
    );

    // Admins add members, but not admins or owners.
    assert_eq!(code(add(a, c, Role::Admin).await), ErrorCode::Forbidden);
    assert_eq!(code(add(a, c, Role::Owner).await), ErrorCode::Forbidden);
    assert_eq!(code(add(a, UserId(999_999), Role::Member).await), ErrorCode::NotFound);
    assert_eq!(code(add(a, b, Role::Member).await), ErrorCode::Conflict, "already a member");
    let added = add(a, c, Role::Member).await.expect("add"); // 3
    assert_eq!(added.seq, 3);
    assert_eq!(code(add(o, d, Role::Member).await), ErrorCode::Conflict, "the group is full");

    // Admins remove members but not the owner (or other admins); anyone may leave.
    let remove = |user: UserId| GroupChange::RemoveMember { user };
    assert_eq!(code(s.change_group(a, g, remove(o)).await), ErrorCode::Forbidden);
    assert_eq!(code(s.change_group(b, g, remove(c)).await), ErrorCode::Forbidden);
    s.change_group(a, g, remove(b)).await.expect("kick"); // 4
    assert_eq!(s.role(b, g).await.expect("role"), None);
    assert_eq!(code(s.change_group(a, g, remove(b)).await), ErrorCode::NotFound);
    s.change_group(a, g, title("renamed")).await.expect("title"); // 5
    assert_eq!(s.conversation(o, g).await.expect("summary").title.as_deref(), Some("renamed"));
    s.change_group(c, g, remove(c)).await.expect("leave"); // 6
    // A former member changes nothing, as if the group did not exist.
    assert_eq!(code(s.change_group(c, g, title("back")).await), ErrorCode::NotFound);

    // The owner leaves: ownership passes to the admin.
    s.change_group(o, g, remove(o)).await.expect("owner leaves"); // 7, 8
    assert_eq!(s.role(a, g).await.expect("role"), Some(Role::Owner));
    assert_eq!(s.role(o, g).await.expect("role"), None);

    let entries = log(s, g).await;
    assert_contiguous(&entries, 1, 8);
    let bodies: Vec<(UserId, EntryBody)> =
        entries[1..].iter().map(|e| (e.sender, e.body.clone())).collect();
    assert_eq!(
        bodies,
        vec![
            (o, EntryBody::RoleChanged { user: a, role: Role::Admin }),
            (a, EntryBody::MemberAdded { user: c, role: Role::Member }),
            (a, EntryBody::MemberRemoved { user: b, banned: false }),
            (a, EntryBody::TitleChanged { title: "renamed".to_owned() }),
            (c, EntryBody::MemberRemoved { user: c, banned: false }),
            (o, EntryBody::MemberRemoved { user: o, banned: false }),
            (o, EntryBody::RoleChanged { user: a, role: Role::Owner }),
        ]
    );
    let members = s.members(g).await.expect("members");
    assert_eq!(members.len(), 1);
    assert_eq!((members[0].user_id, members[0].role), (a, Role::Owner));

    // Without an admin, the longest-standing member takes over.
    let h = group(s, o, "h", &[b]).await; // b joined at 1
    add_member(s, o, h, c, Role::Member).await.expect("add c");
    s.change_group(o, h, remove(o)).await.expect("owner leaves");
    assert_eq!(s.role(b, h).await.expect("role"), Some(Role::Owner));
    assert_eq!(s.role(c, h).await.expect("role"), Some(Role::Member));

    // A direct conversation has no group changes.
    let (bc, _) = s.create_direct(b, c).await.expect("direct");
    assert_eq!(code(s.change_group(b, bc, title("x")).await), ErrorCode::Forbidden);
    assert_eq!(last_seq(s, b, bc).await, 1);
}

// ---- invitations ----

async fn strangers_are_invited_and_contacts_added<S: Store>(f: Fixture<S>) {
    let s = &*f.store;
    let [o, a, x, y] = users(s, ["o", "a", "x", "y"]).await;
    contacts(s, o, &[a]).await;

    // Creating: the owner's contacts are members, the others invited.
    let NewGroup { id: g, invitations } = s.create_group(o, "team", &[a, x]).await.expect("group");
    let entries = log(s, g).await;
    assert_contiguous(&entries, 1, 1);
    assert_eq!(
        entries[0].body,
        EntryBody::Created {
            conversation_kind: ConversationKind::Group,
            title: Some("team".to_owned()),
            members: vec![o, a],
        }
    );
    assert_eq!(invitations.len(), 1, "{invitations:?}");
    let inv = &invitations[0];
    assert_eq!(
        (inv.conversation, inv.title.as_str(), inv.user, inv.inviter, inv.inviter_handle.as_str()),
        (g, "team", x, o, "o")
    );
    assert_eq!(inv.role, Role::Member);
    assert!(inv.invited_at > 0);
    assert_eq!(s.invitations(x).await.expect("list"), invitations);

    // An invitee is not a member in any way.
    assert_eq!(s.role(x, g).await.expect("role"), None);
    assert_eq!(code(s.conversation(x, g).await), ErrorCode::NotFound);
    assert!(s.memberships(x).await.expect("memberships").is_empty());
    assert_eq!(s.share_conversation(o, &[x, a]).await.expect("shared"), vec![a]);
    let ids: BTreeSet<UserId> = s.member_ids(g).await.expect("ids").into_iter().collect();
    assert_eq!(ids, BTreeSet::from([o, a]));
    assert_eq!(code(append(s, g, x, "x1", msg("let me in")).await), ErrorCode::NotFound);

    // Adding: a stranger is invited (nothing enters the log), with the role asked for.
    let inv = invite(s, o, g, y, Role::Admin).await.expect("invite y");
    assert_eq!((inv.conversation, inv.user, inv.inviter, inv.role), (g, y, o, Role::Admin));
    assert_eq!(s.invitations(y).await.expect("list"), vec![inv]);
    assert_eq!(last_seq(s, o, g).await, 1);
    assert_eq!(code(s.add_member(o, g, y, Role::Member).await), ErrorCode::Conflict, "once");
    // An unknown id is not found, as for an add.
    assert_eq!(code(s.add_member(o, g, UserId(999_999), Role::Member).await), ErrorCode::NotFound);
    // The invitation stands until answered, whatever the title becomes.
    s.change_group(o, g, GroupChange::SetTitle { title: "renamed".to_owned() })
        .await
        .expect("title"); // 2
    assert_eq!(s.invitations(y).await.expect("list")[0].title, "renamed");

    // Once a contact (they share a conversation now), y is added directly, and the
    // invitation is gone.
    contacts(s, o, &[y]).await;
    let ack = add_member(s, o, g, y, Role::Member).await.expect("add y"); // 3
    assert_eq!(ack.seq, 3);
    assert!(s.invitations(y).await.expect("list").is_empty());
    assert_eq!(s.role(y, g).await.expect("role"), Some(Role::Member));
    // Contacts are the adder's own: z is a's contact, not o's. o's add is an invitation; a's
    // (as an admin) adds z, and drops that invitation.
    let [z] = users(s, ["z"]).await;
    contacts(s, a, &[z]).await;
    s.change_group(o, g, GroupChange::SetRole { user: a, role: Role::Admin }).await.expect("a");
    assert_eq!(invite(s, o, g, z, Role::Member).await.expect("invite z").inviter, o);
    add_member(s, a, g, z, Role::Member).await.expect("a adds z");
    assert!(s.invitations(z).await.expect("list").is_empty());
}

async fn accepting_makes_a_member_and_declining_leaves_nothing<S: Store>(mut f: Fixture<S>) {
    let s = &*f.store;
    let [o, x, y] = users(s, ["o", "x", "y"]).await;
    let NewGroup { id: g, .. } = s.create_group(o, "g", &[x]).await.expect("group"); // 1
    invite(s, o, g, y, Role::Member).await.expect("invite y");
    send(s, g, o, "o1", "before anyone joined").await; // 2

    // x accepts: a member now, by the `member_added` entry x sends, seeing the whole history.
    let ack = s.accept_invitation(x, g).await.expect("accept"); // 3
    assert_eq!(ack.seq, 3);
    let entries = log(s, g).await;
    assert_contiguous(&entries, 1, 3);
    assert_eq!(
        (entries[2].sender, &entries[2].body),
        (x, &EntryBody::MemberAdded { user: x, role: Role::Member })
    );
    assert_eq!(s.role(x, g).await.expect("role"), Some(Role::Member));
    assert_eq!(s.conversation(x, g).await.expect("summary").last_seq, 3);
    assert!(s.invitations(x).await.expect("list").is_empty());
    assert_eq!(code(s.accept_invitation(x, g).await), ErrorCode::NotFound, "used up");
    send(s, g, x, "x1", "hello").await; // 4
    // The feed carried the accepted member's entry like any membership change.
    let mut fed = Vec::new();
    while fed.len() < 4 {
        fed.extend(f.feed_rx.recv().await.expect("feed"));
    }
    let joined = fed.iter().find(|c| c.entry.seq == 3 && c.entry.conversation == g);
    assert_eq!(joined.map(|c| c.members_seq), Some(3));

    // y declines: nothing is left, and nothing was written.
    s.decline_invitation(y, g).await.expect("decline");
    assert!(s.invitations(y).await.expect("list").is_empty());
    assert_eq!(s.role(y, g).await.expect("role"), None);
    assert_eq!(code(s.accept_invitation(y, g).await), ErrorCode::NotFound);
    assert_eq!(code(s.decline_invitation(y, g).await), ErrorCode::NotFound);
    assert_eq!(last_seq(s, o, g).await, 4);
    // Re-inviting after a decline is a fresh invitation.
    invite(s, o, g, y, Role::Member).await.expect("re-invite");
    assert_eq!(s.invitations(y).await.expect("list").len(), 1);

    // x leaves; having shared nothing else with o, x is a stranger again: adding them back
    // is an invitation, not membership.
    s.change_group(x, g, GroupChange::RemoveMember { user: x }).await.expect("leave"); // 5
    let again = invite(s, o, g, x, Role::Member).await.expect("invited again");
    assert_eq!(again.user, x);
    assert_eq!(s.role(x, g).await.expect("role"), None);
    assert_eq!(code(s.conversation(x, g).await), ErrorCode::NotFound);
    assert_eq!(last_seq(s, o, g).await, 5);
    s.accept_invitation(x, g).await.expect("back"); // 6
    assert_eq!(s.role(x, g).await.expect("role"), Some(Role::Member));
}

async fn accepting_checks_the_group_again<S: Store>(f: Fixture<S>) {
    let s = &*f.store;
    let [o, a, b, c, x] = users(s, ["o", "a", "b", "c", "x"]).await;
    contacts(s, o, &[a, b, c]).await;
    let g = group(s, o, "g", &[a, b]).await; // 3 of 4
    invite(s, o, g, x, Role::Member).await.expect("invite");
    add_member(s, o, g, c, Role::Member).await.expect("the last place"); // 4 of 4
    // The group filled up after the invitation: accepting waits for room.
    assert_eq!(code(s.accept_invitation(x, g).await), ErrorCode::Conflict);
    assert_eq!(s.invitations(x).await.expect("list").len(), 1, "the invitation stays");
    s.change_group(c, g, GroupChange::RemoveMember { user: c }).await.expect("leave");
    s.accept_invitation(x, g).await.expect("room again");
    assert_eq!(s.member_ids(g).await.expect("ids").len(), 4);

    // A group everyone left is gone, and so are its invitations.
    let [y] = users(s, ["y"]).await;
    let h = group(s, o, "h", &[]).await;
    invite(s, o, h, y, Role::Member).await.expect("invite");
    s.change_group(o, h, GroupChange::RemoveMember { user: o }).await.expect("the last leaves");
    assert!(s.invitations(y).await.expect("list").is_empty());
    assert_eq!(code(s.accept_invitation(y, h).await), ErrorCode::NotFound);
    assert_eq!(s.role(y, h).await.expect("role"), None);
}

async fn pending_invitations_are_capped_per_invitee<S: Store>(f: Fixture<S>) {
    let s = &*f.store;
    let [x, o1, o2, o3, o4] = users(s, ["x", "o1", "o2", "o3", "o4"]).await;
    // Three strangers invite x, each to a group of their own: x's cap.
    let mut groups = Vec::new();
    for owner in [o1, o2] {
        let g = group(s, owner, "g", &[]).await;
        invite(s, owner, g, x, Role::Member).await.expect("invite");
        groups.push(g);
    }
    let NewGroup { id, invitations } = s.create_group(o3, "g", &[x]).await.expect("group");
    assert_eq!(invitations.len(), 1);
    groups.push(id);
    assert_eq!(s.invitations(x).await.expect("list").len(), 3);
    // A fourth is refused, by add or by creation (which then creates nothing).
    let g4 = group(s, o4, "g4", &[]).await;
    assert_eq!(code(s.add_member(o4, g4, x, Role::Member).await), ErrorCode::Conflict);
    let before = s.conversations(o4, None, 100).await.expect("list").len();
    assert_eq!(code(s.create_group(o4, "flood", &[x]).await), ErrorCode::Conflict);
    assert_eq!(s.conversations(o4, None, 100).await.expect("list").len(), before);
    // The cap limits invitations, not contacts: a contact is added however many are pending.
    contacts(s, o4, &[x]).await;
    add_member(s, o4, g4, x, Role::Member).await.expect("a contact");
    // Answering one frees a place.
    let [o5] = users(s, ["o5"]).await;
    let g5 = group(s, o5, "g5", &[]).await;
    assert_eq!(code(s.add_member(o5, g5, x, Role::Member).await), ErrorCode::Conflict);
    s.decline_invitation(x, groups[0]).await.expect("decline");
    invite(s, o5, g5, x, Role::Member).await.expect("room again");
    s.accept_invitation(x, groups[1]).await.expect("accept");
    let pending: BTreeSet<ConversationId> =
        s.invitations(x).await.expect("list").iter().map(|i| i.conversation).collect();
    assert_eq!(pending, BTreeSet::from([groups[2], g5]));
}

/// Every refusal a rule makes, as its message (which both backends take from one place).
async fn refusals_read_the_same_on_every_backend<S: Store>(f: Fixture<S>) {
    let s = &*f.store;
    let [o, a, b, c] = users(s, ["o", "a", "b", "c"]).await;
    contacts(s, o, &[a, b]).await;
    contacts(s, a, &[c]).await;
    let ghost = UserId(999_999);
    let says = |res: Result<Ack>| match res {
        Ok(ack) => panic!("expected a refusal, got {ack:?}"),
        Err(e) => e.to_string(),
    };

    assert_eq!(
        s.create_user("O", "h").await.expect_err("taken").to_string(),
        "conflict: handle is taken"
    );
    let direct = |res: Result<(ConversationId, bool)>| res.expect_err("refused").to_string();
    assert_eq!(
        direct(s.create_direct(a, a).await),
        "bad request: a direct conversation needs another user"
    );
    assert_eq!(direct(s.create_direct(a, ghost).await), "user not found");
    let refused = |res: Result<NewGroup>| res.expect_err("refused").to_string();
    assert_eq!(
        refused(s.create_group(o, "big", &[a, b, c, ghost]).await),
        "conflict: too many members for a group"
    );
    assert_eq!(refused(s.create_group(o, "ghost", &[a, ghost]).await), "user not found");
    // The owner and repeats count once against the cap.
    let g = group(s, o, "g", &[a, o, a, b]).await;
    assert_eq!(s.member_ids(g).await.expect("ids").len(), 3);

    // Appends.
    let (ab, _) = s.create_direct(a, b).await.expect("direct");
    let m = send(s, ab, a, "m", "hi").await;
    assert_eq!(says(append(s, ab, c, "x", msg("intrude")).await), "conversation not found");
    let edit = |target: Seq| NewEntry::Edit { target, body: "e".to_owned() };
    assert_eq!(says(append(s, ab, a, "x", edit(1)).await), "bad request: seq 1 is not a message");
    assert_eq!(
        says(append(s, ab, b, "x", edit(m.seq)).await),
        "forbidden: only the sender may change a message"
    );
    append(s, ab, a, "d", NewEntry::Delete { target: m.seq }).await.expect("delete");
    assert_eq!(says(append(s, ab, a, "x", edit(m.seq)).await), "conflict: message is deleted");
    // A reply may still quote the tombstone.
    let reply = NewEntry::Message {
        body: "re".to_owned(),
        reply_to: Some(m.seq),
        attachments: Vec::new(),
        mentions: Vec::new(),
    };
    append(s, ab, b, "re", reply).await.expect("reply to a deleted message");

    // Group changes.
    let change = |actor: UserId, change: GroupChange| s.change_group(actor, g, change);
    let add = |actor: UserId, user: UserId, role: Role| add_member(s, actor, g, user, role);
    let title = GroupChange::SetTitle { title: "t".to_owned() };
    assert_eq!(says(s.change_group(c, g, title.clone()).await), "conversation not found");
    assert_eq!(
        says(s.change_group(a, ab, title.clone()).await),
        "forbidden: a direct conversation cannot change"
    );
    assert_eq!(says(change(a, title).await), "forbidden: only admins change the title");
    assert_eq!(says(add(a, c, Role::Member).await), "forbidden: only admins add members");
    let set_role = |user: UserId, role: Role| GroupChange::SetRole { user, role };
    assert_eq!(
        says(change(a, set_role(b, Role::Admin)).await),
        "forbidden: only the owner changes roles"
    );
    assert_eq!(
        says(change(o, set_role(a, Role::Owner)).await),
        "bad request: ownership passes on only when the owner leaves"
    );
    assert_eq!(says(change(o, set_role(c, Role::Admin)).await), "member not found");
    change(o, set_role(a, Role::Admin)).await.expect("promote");
    assert_eq!(
        says(add(a, c, Role::Admin).await),
        "forbidden: that role cannot be given by this member"
    );
    assert_eq!(says(add(a, ghost, Role::Member).await), "user not found");
    assert_eq!(says(add(a, b, Role::Member).await), "conflict: already a member");
    let remove = |user: UserId| GroupChange::RemoveMember { user };
    assert_eq!(says(change(a, remove(o)).await), "forbidden: not allowed to remove this member");
    assert_eq!(says(change(a, remove(c)).await), "member not found");
    // Invitations (of strangers: d shares no conversation with o).
    let [d, e] = users(s, ["d", "e"]).await;
    let refuse = |res: Result<natter_proto::Invitation>| res.expect_err("refused").to_string();
    invite(s, o, g, d, Role::Member).await.expect("invite");
    assert_eq!(refuse(invite(s, o, g, d, Role::Member).await), "conflict: already invited");
    assert_eq!(
        s.accept_invitation(e, g).await.expect_err("none").to_string(),
        "invitation not found"
    );
    assert_eq!(
        s.decline_invitation(e, g).await.expect_err("none").to_string(),
        "invitation not found"
    );
    for i in 1..MAX_PENDING_INVITATIONS {
        let h = group(s, o, &format!("h{i}"), &[]).await;
        invite(s, o, h, e, Role::Member).await.expect("within the cap");
    }
    let last = group(s, o, "last", &[]).await;
    invite(s, o, last, e, Role::Member).await.expect("the last one within the cap");
    let over = group(s, o, "over", &[]).await;
    assert_eq!(
        refuse(invite(s, o, over, e, Role::Member).await),
        "conflict: too many pending invitations"
    );
    assert_eq!(
        refused(s.create_group(o, "more", &[e]).await),
        "conflict: too many pending invitations"
    );

    add(a, c, Role::Member).await.expect("add"); // 4 of 4
    assert_eq!(says(add(o, d, Role::Member).await), "conflict: the group is full");
    assert_eq!(says(s.accept_invitation(d, g).await), "conflict: the group is full");
}

// ---- cursors ----

async fn set_cursors_is_monotonic_clamped_and_read_implies_delivered<S: Store>(f: Fixture<S>) {
    let s = &*f.store;
    let [a, b, c] = users(s, ["a", "b", "c"]).await;
    let (ab, _) = s.create_direct(a, b).await.expect("direct"); // 1 by a
    send(s, ab, a, "a1", "1").await; // 2
    send(s, ab, b, "b1", "2").await; // 3
    send(s, ab, a, "a2", "3").await; // 4
    send(s, ab, a, "a3", "4").await; // 5

    let upd = |user: UserId, delivered: Option<Seq>, read: Option<Seq>| CursorUpdate {
        conversation: ab,
        user,
        delivered,
        read,
    };
    let receipt = |user: UserId, delivered_seq: Seq, read_seq: Seq| Receipt {
        conversation: ab,
        user,
        delivered_seq,
        read_seq,
    };
    let set = |updates: Vec<CursorUpdate>| async move {
        s.set_cursors(updates).await.expect("set cursors")
    };

    assert_eq!(set(vec![upd(b, Some(3), None)]).await, vec![receipt(b, 3, 0)]);
    // Unchanged or backwards: nothing changes, nothing is reported.
    assert_eq!(set(vec![upd(b, Some(3), None)]).await, vec![]);
    assert_eq!(set(vec![upd(b, Some(2), None)]).await, vec![]);
    assert_eq!(set(vec![upd(b, None, None)]).await, vec![]);
    assert_eq!(set(vec![upd(b, None, Some(2))]).await, vec![receipt(b, 3, 2)]);
    assert_eq!(set(vec![upd(b, None, Some(1))]).await, vec![]);
    // Reading implies delivery.
    assert_eq!(set(vec![upd(b, None, Some(4))]).await, vec![receipt(b, 4, 4)]);
    // Clamped to last_seq.
    assert_eq!(set(vec![upd(b, Some(100), None)]).await, vec![receipt(b, 5, 4)]);
    assert_eq!(set(vec![upd(b, Some(100), Some(100))]).await, vec![receipt(b, 5, 5)]);
    // Non-members are skipped; several members at once, only the changes come back.
    assert_eq!(
        set(vec![upd(c, Some(5), Some(5)), upd(b, Some(5), Some(5)), upd(a, Some(2), Some(1)),])
            .await,
        vec![receipt(a, 2, 1)]
    );

    let members = s.members(ab).await.expect("members");
    let cursors: BTreeMap<UserId, (Seq, Seq)> =
        members.iter().map(|m| (m.user_id, (m.delivered_seq, m.read_seq))).collect();
    assert_eq!(cursors, BTreeMap::from([(a, (2, 1)), (b, (5, 5))]));

    // Unread: entries after read_seq written by others.
    let sa = s.conversation(a, ab).await.expect("summary");
    assert_eq!((sa.delivered_seq, sa.read_seq, sa.unread), (2, 1, 1));
    let sb = s.conversation(b, ab).await.expect("summary");
    assert_eq!((sb.delivered_seq, sb.read_seq, sb.unread), (5, 5, 0));
    send(s, ab, a, "a4", "5").await; // 6
    send(s, ab, b, "b2", "6").await; // 7
    assert_eq!(s.conversation(b, ab).await.expect("summary").unread, 1);
    assert_eq!(s.conversation(a, ab).await.expect("summary").unread, 2);
}

// ---- lists ----

async fn conversations_most_recent_first_with_keyset_paging<S: Store>(f: Fixture<S>) {
    let s = &*f.store;
    let [me, p1, p2, p3, p4] = users(s, ["me", "p1", "p2", "p3", "p4"]).await;
    let mut convs = Vec::new();
    for p in [p1, p2, p3, p4] {
        convs.push(s.create_direct(me, p).await.expect("direct").0);
    }
    // (Before the group, so that p2 is p1's contact and a member, not invited.)
    let (others, _) = s.create_direct(p1, p2).await.expect("not mine");
    convs.push(group(s, p1, "group", &[me, p2]).await);
    // The oldest conversation gets the newest entry.
    let bump = send(s, convs[0], p1, "bump", "hello").await;

    let all = s.conversations(me, None, 100).await.expect("list");
    let ids: BTreeSet<ConversationId> = all.iter().map(|c| c.id).collect();
    assert_eq!(ids, convs.iter().copied().collect());
    assert!(!ids.contains(&others));
    assert!(
        all.windows(2).all(|w| (w[0].last_activity, w[0].id) > (w[1].last_activity, w[1].id)),
        "most recent activity first, then by id: {all:?}"
    );
    let bumped = all.iter().find(|c| c.id == convs[0]).expect("listed");
    assert_eq!((bumped.last_seq, bumped.last_activity), (2, bump.ts));
    assert!(all.iter().all(|c| c.last_activity <= bump.ts));
    let group = all.iter().find(|c| c.id == convs[4]).expect("listed");
    assert_eq!(
        (group.kind, group.role, group.title.as_deref()),
        (ConversationKind::Group, Role::Member, Some("group"))
    );

    // Keyset paging returns the same list, each conversation once.
    let mut paged = Vec::new();
    let mut before = None;
    loop {
        let page = s.conversations(me, before, 2).await.expect("page");
        assert!(page.len() <= 2);
        let Some(last) = page.last() else { break };
        before = Some((last.last_activity, last.id));
        let done = page.len() < 2;
        paged.extend(page);
        if done {
            break;
        }
    }
    assert_eq!(paged, all);
    assert_eq!(s.conversations(p4, None, 100).await.expect("list").len(), 1);
}

async fn summaries_name_the_peer_and_preview_the_newest_message<S: Store>(f: Fixture<S>) {
    let s = &*f.store;
    let [a, b] = users(s, ["ann", "bob"]).await;
    let (ab, _) = s.create_direct(a, b).await.expect("direct");
    let peer_of = |u: UserId, handle: &str| Some(User::new(u, handle));
    let preview = |user: UserId, conv: ConversationId| async move {
        s.conversation(user, conv).await.expect("summary").last_message
    };
    let (sa, sb) = (s.conversation(a, ab).await.unwrap(), s.conversation(b, ab).await.unwrap());
    assert_eq!((sa.peer, sb.peer), (peer_of(b, "bob"), peer_of(a, "ann")));
    assert_eq!(sa.last_message, None, "no message yet: `created` is not one");

    let hi = send(s, ab, a, "c1", "hello").await;
    let expected = MessagePreview {
        seq: hi.seq,
        sender: a,
        ts: hi.ts,
        text: "hello".to_owned(),
        truncated: false,
        edited: false,
        deleted: false,
        attachments: Vec::new(),
    };
    assert_eq!(preview(b, ab).await, Some(expected.clone()));
    // Reactions are not messages: the preview stays on the message.
    let react = NewEntry::Reaction { target: hi.seq, emoji: "+1".to_owned(), remove: false };
    append(s, ab, b, "c2", react).await.expect("react");
    assert_eq!(preview(a, ab).await, Some(expected));

    // Long text is cut at a character boundary.
    let long: String = "é".repeat(PREVIEW_CHARS + 40);
    let l = send(s, ab, b, "c3", &long).await;
    let p = preview(a, ab).await.expect("preview");
    assert_eq!((p.seq, p.sender, p.truncated), (l.seq, b, true));
    assert_eq!(p.text, "é".repeat(PREVIEW_CHARS));
    // An edit shows in the preview; a deletion leaves a tombstone with no text.
    let edit = NewEntry::Edit { target: l.seq, body: "short".to_owned() };
    append(s, ab, b, "c4", edit).await.expect("edit");
    let p = preview(a, ab).await.expect("preview");
    assert_eq!((p.seq, p.text.as_str(), p.edited, p.truncated), (l.seq, "short", true, false));
    append(s, ab, b, "c5", NewEntry::Delete { target: l.seq }).await.expect("delete");
    let p = preview(a, ab).await.expect("preview");
    assert_eq!((p.seq, p.text.as_str(), p.deleted), (l.seq, "", true));

    // Attachments by content type; a group names no peer; the list carries the same.
    s.create_media(new_media("m1", a, "s1", 10)).await.expect("media");
    let g = group(s, a, "g", &[b]).await;
    let pic = append(s, g, a, "c6", with_media("", &["m1"])).await.expect("send");
    let listed = s.conversations(b, None, 10).await.expect("list");
    assert_eq!(listed.iter().map(|c| c.id).collect::<Vec<_>>(), [g, ab]);
    assert_eq!(listed[0].peer, None);
    let p = listed[0].last_message.clone().expect("preview");
    assert_eq!((p.seq, p.text.as_str()), (pic.seq, ""));
    assert_eq!(p.attachments, ["image/png"]);
    assert_eq!(listed[1].peer, peer_of(a, "ann"));
    assert_eq!(listed[1].last_message.as_ref().map(|p| p.seq), Some(l.seq));
}

async fn profiles_are_set_cleared_looked_up_and_searched_among_contacts<S: Store>(f: Fixture<S>) {
    let s = &*f.store;
    let [ann, anna, bob, stranger] = users(s, ["ann", "anna_b", "bob", "annie"]).await;
    contacts(s, ann, &[anna, bob]).await;
    let set = |name: Option<&str>, status: Option<&str>| ProfileUpdate {
        display_name: name.map(str::to_owned),
        status_text: status.map(str::to_owned),
        avatar: None,
    };
    let bob_now = s.set_profile(bob, set(Some("Ännchen Bob"), Some("on holiday"))).await.unwrap();
    assert_eq!(bob_now.display_name.as_deref(), Some("Ännchen Bob"));
    assert_eq!(bob_now.status_text.as_deref(), Some("on holiday"));
    // An absent field stays; an empty one is cleared.
    let bob_now = s.set_profile(bob, set(None, Some(""))).await.unwrap();
    assert_eq!(
        (bob_now.display_name.as_deref(), bob_now.status_text.as_deref()),
        (Some("Ännchen Bob"), None)
    );

    let found = s.users(&[bob, UserId(999_999), ann]).await.unwrap();
    assert_eq!(found, vec![bob_now.clone(), User::new(ann, "ann")], "those that exist, in order");

    let handles = |v: Vec<User>| v.into_iter().map(|u| u.handle).collect::<Vec<_>>();
    // By handle or display name prefix, ignoring case, among contacts only (not `annie`).
    assert_eq!(handles(s.search_users(ann, "ANN", false, 10).await.unwrap()), ["anna_b"]);
    assert_eq!(handles(s.search_users(ann, "ännchen", false, 10).await.unwrap()), ["bob"]);
    assert_eq!(handles(s.search_users(ann, "ann", true, 10).await.unwrap()), ["anna_b", "annie"]);
    assert_eq!(handles(s.search_users(ann, "ann", true, 1).await.unwrap()), ["anna_b"]);
    // `_` and `%` are literal.
    assert_eq!(handles(s.search_users(ann, "anna_", false, 10).await.unwrap()), ["anna_b"]);
    assert!(s.search_users(ann, "a%", true, 10).await.unwrap().is_empty());
    assert!(s.search_users(stranger, "ann", false, 10).await.unwrap().is_empty(), "no contacts");

    let mut of_ann = s.contacts_of(ann).await.unwrap();
    of_ann.sort();
    assert_eq!(of_ann, vec![anna, bob]);
    assert!(s.contacts_of(stranger).await.unwrap().is_empty());
    // The direct peer in a summary carries the profile.
    let (ab, _) = s.create_direct(ann, bob).await.unwrap();
    assert_eq!(s.conversation(ann, ab).await.unwrap().peer, Some(bob_now));

    // An avatar is an image its user uploaded; it survives the collection of unattached media.
    s.create_media(new_media("pic", bob, "s1", 10)).await.unwrap();
    s.create_media(new_media("anns", ann, "s2", 10)).await.unwrap();
    let mut doc = new_media("doc", bob, "s3", 10);
    doc.content_type = "application/pdf".to_owned();
    s.create_media(doc).await.unwrap();
    let avatar = |id: &str| ProfileUpdate { avatar: Some(id.to_owned()), ..Default::default() };
    let with = s.set_profile(bob, avatar("pic")).await.unwrap();
    let got = with.avatar.clone().expect("an avatar");
    assert_eq!((got.id.as_str(), got.has_thumbnail, got.url), ("pic", true, None));
    assert_eq!(s.users(&[bob]).await.unwrap(), vec![with.clone()]);
    assert_eq!(s.conversation(ann, ab).await.unwrap().peer, Some(with));
    assert_eq!(code(s.set_profile(bob, avatar("anns")).await), ErrorCode::NotFound, "not bob's");
    assert_eq!(code(s.set_profile(bob, avatar("nope")).await), ErrorCode::NotFound);
    assert_eq!(code(s.set_profile(bob, avatar("doc")).await), ErrorCode::BadRequest);
    let far = i64::MAX / 2;
    s.collect_media(far, far).await.unwrap();
    assert!(s.media("pic").await.unwrap().is_some(), "an avatar is kept");
    assert!(s.media("doc").await.unwrap().is_none(), "an unattached upload goes");
    let without = s.set_profile(bob, avatar("")).await.unwrap();
    assert_eq!(without.avatar, None);
}

async fn a_block_stops_new_conversations_adds_direct_writes_and_presence<S: Store>(f: Fixture<S>) {
    let s = &*f.store;
    let [ann, bob, cy, dee] = users(s, ["ann", "bob", "cy", "dee"]).await;
    let (ab, _) = s.create_direct(ann, bob).await.unwrap();
    let (bc, _) = s.create_direct(bob, cy).await.unwrap();
    let (cd, _) = s.create_direct(cy, dee).await.unwrap();
    let group = s.create_group(ann, "g", &[bob]).await.unwrap().id;
    send(s, ab, bob, "b0", "hi").await;

    // Ann blocks cy and bob: listed by id; again changes nothing; limits and unknowns.
    s.block(ann, cy, 3).await.unwrap();
    s.block(ann, bob, 3).await.unwrap();
    s.block(ann, bob, 3).await.unwrap();
    assert_eq!(s.blocks(ann).await.unwrap(), vec![bob, cy]);
    assert_eq!(code(s.block(ann, ann, 3).await), ErrorCode::BadRequest);
    assert_eq!(code(s.block(ann, UserId(9999), 3).await), ErrorCode::NotFound);
    assert_eq!(code(s.block(bob, ann, 0).await), ErrorCode::Conflict);
    let mut rel = s.block_relations(bob).await.unwrap();
    rel.sort();
    assert_eq!(rel, vec![ann]);

    // Cy cannot open a direct conversation with ann, nor put her in a group (unknown user).
    assert_eq!(code(s.create_direct(cy, ann).await), ErrorCode::NotFound);
    assert_eq!(code(s.create_group(cy, "x", &[ann]).await), ErrorCode::NotFound);
    // Bob's existing pair is found, but neither writes in it; deleting one's own message is
    // still allowed.
    assert_eq!(s.create_direct(bob, ann).await.unwrap(), (ab, false));
    assert_eq!(code(append(s, ab, bob, "b1", msg("still there?")).await), ErrorCode::Forbidden);
    assert_eq!(code(append(s, ab, ann, "a1", msg("no")).await), ErrorCode::Forbidden);
    append(s, ab, bob, "b2", NewEntry::Delete { target: 2 }).await.unwrap();
    // Other conversations are untouched: groups keep working for both.
    send(s, group, bob, "g1", "in the group").await;
    send(s, bc, bob, "c1", "to cy").await;
    // Bob (an admin of cy's group) cannot add ann, whom he shares a group with.
    let cgroup = s.create_group(bob, "bob's", &[cy]).await.unwrap().id;
    assert_eq!(code(s.add_member(bob, cgroup, ann, Role::Member).await), ErrorCode::NotFound);
    // Presence: neither way.
    assert_eq!(s.share_conversation(bob, &[ann, cy]).await.unwrap(), vec![cy]);
    assert_eq!(s.share_conversation(ann, &[bob]).await.unwrap(), Vec::<UserId>::new());

    // Unblocked: writing and adding work again; dee blocked nobody and is untouched.
    s.unblock(ann, bob).await.unwrap();
    s.unblock(ann, bob).await.unwrap();
    send(s, ab, bob, "b3", "back").await;
    assert_eq!(s.share_conversation(ann, &[bob]).await.unwrap(), vec![bob]);
    assert!(matches!(
        s.add_member(bob, cgroup, ann, Role::Member).await.unwrap(),
        Added::Member(_)
    ));
    send(s, cd, dee, "d1", "hello").await;
    assert_eq!(s.blocks(ann).await.unwrap(), vec![cy]);
}

async fn groups_are_moderated_by_owner_and_admins<S: Store>(f: Fixture<S>) {
    let s = &*f.store;
    let [ann, bob, cy, dee] = users(s, ["ann", "bob", "cy", "dee"]).await;
    for u in [bob, cy, dee] {
        s.create_direct(ann, u).await.unwrap();
    }
    let g = s.create_group(ann, "g", &[bob, cy, dee]).await.unwrap().id;
    let change = |actor, change| s.change_group(actor, g, change);
    change(ann, GroupChange::SetRole { user: bob, role: Role::Admin }).await.unwrap();

    // An admin deletes a member's message; a member cannot.
    let m = send(s, g, cy, "c1", "spam").await;
    let d = send(s, g, dee, "d1", "hi").await;
    assert_eq!(
        code(append(s, g, cy, "x", NewEntry::Delete { target: d.seq }).await),
        ErrorCode::Forbidden
    );
    append(s, g, bob, "y", NewEntry::Delete { target: m.seq }).await.unwrap();

    // Mute: refused with the time, unmuted by None; the member list shows it.
    let until = now() + 60_000;
    change(bob, GroupChange::Mute { user: cy, until: Some(until) }).await.unwrap();
    match append(s, g, cy, "c2", msg("x")).await {
        Err(natter_store::StoreError::Muted { until: u }) => assert_eq!(u, until),
        other => panic!("expected muted, got {other:?}"),
    }
    let row = s.members(g).await.unwrap().into_iter().find(|m| m.user_id == cy).unwrap();
    assert_eq!(row.muted_until, Some(until));
    assert_eq!(s.conversation(cy, g).await.unwrap().muted_until, Some(until));
    assert_eq!(
        code(change(bob, GroupChange::Mute { user: ann, until: Some(until) }).await),
        ErrorCode::Forbidden
    );
    assert_eq!(
        code(change(cy, GroupChange::Mute { user: dee, until: Some(until) }).await),
        ErrorCode::Forbidden
    );
    change(bob, GroupChange::Mute { user: cy, until: None }).await.unwrap();
    send(s, g, cy, "c3", "back").await;

    // Slow mode and lock.
    change(bob, GroupChange::Settings { slow_mode_secs: 600, locked: false }).await.unwrap();
    send(s, g, dee, "d2", "one").await;
    match append(s, g, dee, "d3", msg("two")).await {
        Err(natter_store::StoreError::SlowMode { retry_after_ms }) => {
            assert!(retry_after_ms > 590_000 && retry_after_ms <= 600_000, "{retry_after_ms}");
        }
        other => panic!("expected slow mode, got {other:?}"),
    }
    send(s, g, bob, "b1", "admins are not slowed").await;
    send(s, g, bob, "b2", "at all").await;
    assert_eq!(s.conversation(dee, g).await.unwrap().slow_mode_secs, 600);
    let too_slow = GroupChange::Settings {
        slow_mode_secs: natter_store::MAX_SLOW_MODE_SECS + 1,
        locked: false,
    };
    assert_eq!(code(change(ann, too_slow).await), ErrorCode::BadRequest);
    change(ann, GroupChange::Settings { slow_mode_secs: 0, locked: true }).await.unwrap();
    assert_eq!(code(append(s, g, cy, "c4", msg("x")).await), ErrorCode::Forbidden);
    send(s, g, bob, "b3", "news").await;
    assert!(s.conversation(cy, g).await.unwrap().locked);
    change(ann, GroupChange::Settings { slow_mode_secs: 0, locked: false }).await.unwrap();

    // Ban: removed, not added again until unbanned.
    assert_eq!(code(change(cy, GroupChange::Ban { user: dee }).await), ErrorCode::Forbidden);
    change(bob, GroupChange::Ban { user: dee }).await.unwrap();
    assert_eq!(s.role(dee, g).await.unwrap(), None);
    assert_eq!(code(s.add_member(ann, g, dee, Role::Member).await), ErrorCode::Forbidden);
    let bans = s.bans(g).await.unwrap();
    assert_eq!(bans.iter().map(|b| (b.user_id, b.banned_by)).collect::<Vec<_>>(), vec![(dee, bob)]);
    assert_eq!(code(s.unban(cy, g, dee).await), ErrorCode::Forbidden);
    s.unban(ann, g, dee).await.unwrap();
    assert!(s.bans(g).await.unwrap().is_empty());
    assert!(matches!(s.add_member(ann, g, dee, Role::Member).await.unwrap(), Added::Member(_)));
    let log = log(s, g).await;
    assert!(log.iter().any(|e| e.body == EntryBody::MemberRemoved { user: dee, banned: true }));
}

async fn reports_keep_what_was_reported_and_admins_act_on_them<S: Store>(f: Fixture<S>) {
    use natter_proto::rest::ReportStatus;
    use natter_store::{NewReport, ReportTarget};
    let s = &*f.store;
    let [ann, bob, cy, mod_] = users(s, ["ann", "bob", "cy", "mod"]).await;
    let (ab, _) = s.create_direct(ann, bob).await.unwrap();
    let m = send(s, ab, bob, "b1", "something nasty").await;
    let report =
        |reporter, target| NewReport { reporter: Some(reporter), target, reason: "abuse".into() };
    let msg_target = ReportTarget::Message { conversation: ab, seq: m.seq };

    // Who may report what.
    assert_eq!(code(s.create_report(report(cy, msg_target)).await), ErrorCode::NotFound);
    assert_eq!(code(s.create_report(report(bob, msg_target)).await), ErrorCode::BadRequest);
    let gone = ReportTarget::Message { conversation: ab, seq: 999 };
    assert_eq!(code(s.create_report(report(ann, gone)).await), ErrorCode::NotFound);
    assert_eq!(
        code(s.create_report(report(ann, ReportTarget::User(cy))).await),
        ErrorCode::NotFound
    );
    let r1 = s.create_report(report(ann, msg_target)).await.unwrap();
    let r2 = s.create_report(report(ann, ReportTarget::User(bob))).await.unwrap();

    // An edit and a deletion afterwards change nothing of the snapshot.
    append(s, ab, bob, "e", NewEntry::Edit { target: m.seq, body: "nice".into() }).await.unwrap();
    append(s, ab, bob, "d", NewEntry::Delete { target: m.seq }).await.unwrap();
    let open = s.reports(Some(ReportStatus::Open), None, 10).await.unwrap();
    assert_eq!(open.iter().map(|r| r.id).collect::<Vec<_>>(), vec![r2, r1], "newest first");
    let first = open.iter().find(|r| r.id == r1).unwrap();
    assert_eq!((first.subject, first.subject_handle.as_str()), (bob, "bob"));
    assert_eq!(first.reporter_handle.as_deref(), Some("ann"));
    assert_eq!(first.snapshot["body"], "something nasty");
    assert_eq!(open.iter().find(|r| r.id == r2).unwrap().snapshot["handle"], "bob");
    assert_eq!(s.reports(None, Some(r2), 10).await.unwrap().len(), 1, "paged by id");
    // The server flags a message of any conversation; it never reports users.
    let flag = |target| NewReport { reporter: None, target, reason: "rule".into() };
    let (bc, _) = s.create_direct(bob, cy).await.unwrap();
    let m_bc = send(s, bc, bob, "bc", "flagged words").await;
    let target = ReportTarget::Message { conversation: bc, seq: m_bc.seq };
    let r3 = s.create_report(flag(target)).await.unwrap();
    assert_eq!(code(s.create_report(flag(ReportTarget::User(bob))).await), ErrorCode::BadRequest);
    let flagged = s.reports(None, None, 1).await.unwrap().pop().unwrap();
    assert_eq!((flagged.id, flagged.reporter, flagged.subject), (r3, None, bob));
    assert_eq!(flagged.snapshot["body"], "flagged words");
    s.resolve_report(ann, r3, ReportStatus::Dismissed, None).await.unwrap();

    // Administration: grant, resolve, suspend (devices go), restore, remove; all audited.
    assert!(!s.is_admin(mod_).await.unwrap());
    s.set_admin(mod_, true, None).await.unwrap();
    assert!(s.is_admin(mod_).await.unwrap());
    s.resolve_report(mod_, r1, ReportStatus::Resolved, Some("removed".into())).await.unwrap();
    assert_eq!(
        code(s.resolve_report(mod_, 9999, ReportStatus::Dismissed, None).await),
        ErrorCode::NotFound
    );
    assert_eq!(
        code(s.resolve_report(mod_, r2, ReportStatus::Open, None).await),
        ErrorCode::BadRequest
    );
    let open = s.reports(Some(ReportStatus::Open), None, 10).await.unwrap();
    assert_eq!(open.iter().map(|r| r.id).collect::<Vec<_>>(), vec![r2]);

    let d1 = s.create_device(bob, "phone", [7; 32]).await.unwrap();
    assert_eq!(
        code(s.suspend(mod_, mod_, natter_store::BANNED, "x".into()).await),
        ErrorCode::BadRequest
    );
    assert_eq!(
        code(s.suspend(bob, mod_, natter_store::BANNED, "x".into()).await),
        ErrorCode::Forbidden
    );
    assert_eq!(
        code(s.suspend(mod_, UserId(9999), natter_store::BANNED, "x".into()).await),
        ErrorCode::NotFound
    );
    assert_eq!(s.suspend(mod_, bob, natter_store::BANNED, "spam".into()).await.unwrap(), vec![d1]);
    assert!(s.authenticate([7; 32]).await.unwrap().is_none());
    assert_eq!(
        s.user_by_handle("bob").await.unwrap().unwrap().suspended_until,
        Some(natter_store::BANNED)
    );
    assert_eq!(code(s.create_device(bob, "again", [8; 32]).await), ErrorCode::Forbidden);
    let listed = s.admin_users(Some("bo".into()), None, 10).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert!(listed[0].banned && listed[0].suspended_until.is_none());
    assert_eq!(listed[0].suspension_reason.as_deref(), Some("spam"));
    let everyone = s.admin_users(None, None, 2).await.unwrap();
    assert_eq!(everyone.iter().map(|u| u.user.user_id).collect::<Vec<_>>(), vec![ann, bob]);
    let next = s.admin_users(None, Some(bob), 10).await.unwrap();
    assert_eq!(next.iter().map(|u| u.user.user_id).collect::<Vec<_>>(), vec![cy, mod_]);
    assert!(next[1].admin);
    s.restore(mod_, bob).await.unwrap();
    s.create_device(bob, "again", [8; 32]).await.unwrap();

    let m2 = send(s, ab, bob, "b2", "more").await;
    let m3 = send(s, ab, bob, "b3", "and more").await;
    send(s, ab, ann, "a1", "ann's").await;
    let ack = s.remove_message(mod_, ab, m2.seq).await.unwrap();
    assert_eq!(code(s.remove_message(mod_, ab, m2.seq).await), ErrorCode::Conflict);
    assert_eq!(code(s.remove_message(mod_, ab, 9999).await), ErrorCode::NotFound);
    let entries = log(s, ab).await;
    let tomb = entries.iter().find(|e| e.seq == ack.seq).unwrap();
    assert_eq!((tomb.sender, &tomb.body), (mod_, &EntryBody::Delete { target: m2.seq }));
    let n = s.remove_messages_by(mod_, bob, 10).await.unwrap();
    assert_eq!(n, 2, "m3 and the flagged one: m1, m2 are gone");
    assert_eq!(s.remove_messages_by(mod_, bob, 10).await.unwrap(), 0);
    assert!(
        log(s, ab).await.iter().find(|e| e.seq == m3.seq).unwrap().state.as_ref().unwrap().deleted
    );
    let ann_msgs = s.messages_by(ann, None, 10).await.unwrap();
    assert_eq!(ann_msgs.len(), 1, "others' messages stay");

    let audit = s.audit_log(None, 100).await.unwrap();
    let actions: Vec<&str> = audit.iter().map(|a| a.action.as_str()).collect();
    assert_eq!(
        actions,
        [
            "remove_messages",
            "remove_message",
            "restore",
            "ban",
            "resolve_report",
            "grant_admin",
            "dismiss_report"
        ]
    );
    assert_eq!(audit[0].details["count"], 2);
    assert_eq!(audit[1].conversation, Some(ab));
    assert_eq!(audit[3].details["reason"], "spam");
    assert_eq!(audit[5].actor, None);
    assert_eq!(audit[4].report, Some(r1));
    assert_eq!(s.audit_log(Some(audit[1].id), 1).await.unwrap()[0].id, audit[2].id);
    s.set_admin(mod_, false, Some(ann)).await.unwrap();
    assert!(!s.is_admin(mod_).await.unwrap());
}

async fn the_push_queue_coalesces_leases_and_clears_on_read<S: Store>(f: Fixture<S>) {
    use natter_store::{NewPushRegistration, PushCandidate, PushKind, PushOutcome};
    let s = &*f.store;
    let [ann, bob, cy] = users(s, ["ann", "bob", "cy"]).await;
    let (ab, _) = s.create_direct(ann, bob).await.unwrap();
    let (ac, _) = s.create_direct(ann, cy).await.unwrap();
    let phone = s.create_device(bob, "phone", [3; 32]).await.unwrap();
    let reg = |token: &str| NewPushRegistration {
        provider: "webhook".into(),
        token: token.into(),
        p256dh: None,
        auth: None,
    };
    let id = s.add_push_registration(bob, phone, reg("t1")).await.unwrap();
    assert_eq!(s.add_push_registration(bob, phone, reg("t1")).await.unwrap(), id, "the same token");
    assert_eq!(s.push_registrations(bob).await.unwrap().len(), 1);
    assert_eq!(code(s.delete_push_registration(ann, id).await), ErrorCode::NotFound);
    let t0 = now();
    let candidate = |user, conv, seq, due_at| PushCandidate {
        user,
        conversation: conv,
        seq,
        sender: ann,
        preview: format!("m{seq}"),
        due_at,
    };

    // Three messages coalesce into one job; cy has no registration: nothing for cy.
    let mut seqs = Vec::new();
    for i in 0..3 {
        seqs.push(send(s, ab, ann, &format!("a{i}"), "x").await.seq);
    }
    let m_cy = send(s, ac, ann, "c", "x").await.seq;
    let cands: Vec<_> = seqs.iter().map(|q| candidate(bob, ab, *q, t0 + 1_000)).collect();
    assert_eq!(s.queue_pushes(cands, t0).await.unwrap(), 3);
    assert_eq!(s.queue_pushes(vec![candidate(cy, ac, m_cy, t0)], t0).await.unwrap(), 0);
    assert!(s.claim_pushes(t0, 60_000, 10).await.unwrap().is_empty(), "not due yet");
    let jobs = s.claim_pushes(t0 + 1_000, 60_000, 10).await.unwrap();
    assert_eq!(jobs.len(), 1);
    let job = &jobs[0];
    assert_eq!(
        (job.kind, job.first_seq, job.last_seq, job.count),
        (PushKind::Notify, seqs[0], seqs[2], 3)
    );
    assert_eq!(
        (job.sender_handle.as_str(), job.preview.as_str()),
        ("ann", format!("m{}", seqs[2]).as_str())
    );
    assert_eq!(job.registrations.len(), 1);
    assert!(s.claim_pushes(t0 + 2_000, 60_000, 10).await.unwrap().is_empty(), "leased");

    // A message joins while it is out: finishing keeps it, due at `next_due`.
    let late = send(s, ab, ann, "a3", "x").await.seq;
    s.queue_pushes(vec![candidate(bob, ab, late, t0 + 3_000)], t0 + 2_000).await.unwrap();
    let shown = Some((bob, ab));
    let done = PushOutcome::Done { last_seq: job.last_seq, count: 3, shown, next_due: t0 + 5_000 };
    s.finish_push(job.id, done).await.unwrap();
    assert!(s.claim_pushes(t0 + 4_000, 60_000, 10).await.unwrap().is_empty());
    let again = s.claim_pushes(t0 + 5_000, 60_000, 10).await.unwrap();
    assert_eq!((again[0].first_seq, again[0].last_seq, again[0].count), (late, late, 1));
    // Retry: due again later, attempts counted; a lapsed lease is claimed again.
    s.finish_push(again[0].id, PushOutcome::Retry { due_at: t0 + 6_000 }).await.unwrap();
    let retried = s.claim_pushes(t0 + 6_000, 1_000, 10).await.unwrap();
    assert_eq!(retried[0].attempts, 1);
    let lapsed = s.claim_pushes(t0 + 7_001, 1_000, 10).await.unwrap();
    assert_eq!(lapsed.len(), 1, "the lease lapsed: another node takes it");

    // Reading drops the pending job and, since one was shown, queues a clear.
    s.set_cursors(vec![CursorUpdate {
        conversation: ab,
        user: bob,
        delivered: None,
        read: Some(late),
    }])
    .await
    .unwrap();
    let cleared = s.claim_pushes(now() + 1, 60_000, 10).await.unwrap();
    assert_eq!(cleared.len(), 1);
    assert_eq!((cleared[0].kind, cleared[0].last_seq), (PushKind::Clear, late));
    let done = PushOutcome::Done { last_seq: late, count: 0, shown: None, next_due: 0 };
    s.finish_push(cleared[0].id, done).await.unwrap();
    assert!(s.claim_pushes(i64::MAX - 1, 60_000, 10).await.unwrap().is_empty());

    // Read while the notification is out: once it is shown, a clear follows at once.
    let racing = send(s, ab, ann, "a5", "x").await.seq;
    s.queue_pushes(vec![candidate(bob, ab, racing, 0)], now()).await.unwrap();
    let out = s.claim_pushes(now() + 1, 60_000, 10).await.unwrap();
    assert_eq!((out.len(), out[0].kind), (1, PushKind::Notify));
    let read = CursorUpdate { conversation: ab, user: bob, delivered: None, read: Some(racing) };
    s.set_cursors(vec![read]).await.unwrap();
    let done = PushOutcome::Done { last_seq: racing, count: 1, shown, next_due: 0 };
    s.finish_push(out[0].id, done).await.unwrap();
    let cleared = s.claim_pushes(now() + 1, 60_000, 10).await.unwrap();
    assert_eq!(cleared.len(), 1, "{cleared:?}");
    assert_eq!((cleared[0].kind, cleared[0].last_seq), (PushKind::Clear, racing));
    let done = PushOutcome::Done { last_seq: racing, count: 0, shown: None, next_due: 0 };
    s.finish_push(cleared[0].id, done).await.unwrap();

    // Muted, do-not-disturb and read messages queue nothing; a dead token goes.
    let m = send(s, ab, ann, "a4", "x").await.seq;
    s.mute_notifications(bob, Some(ab), Some(i64::MAX)).await.unwrap();
    assert_eq!(s.queue_pushes(vec![candidate(bob, ab, m, t0)], now()).await.unwrap(), 0);
    s.mute_notifications(bob, Some(ab), None).await.unwrap();
    s.mute_notifications(bob, None, Some(i64::MAX)).await.unwrap();
    assert_eq!(s.queue_pushes(vec![candidate(bob, ab, m, t0)], now()).await.unwrap(), 0);
    s.mute_notifications(bob, None, None).await.unwrap();
    assert_eq!(s.queue_pushes(vec![candidate(bob, ab, late, t0)], now()).await.unwrap(), 0, "read");
    assert_eq!(code(s.mute_notifications(cy, Some(ab), None).await), ErrorCode::NotFound);
    s.drop_push_token("webhook", "t1").await.unwrap();
    assert!(s.push_registrations(bob).await.unwrap().is_empty());
    // A registration goes with its device.
    s.add_push_registration(bob, phone, reg("t2")).await.unwrap();
    s.revoke_device(bob, phone).await.unwrap();
    assert!(s.push_registrations(bob).await.unwrap().is_empty());
}

async fn digests_go_to_verified_addresses_with_the_unread_conversations<S: Store>(f: Fixture<S>) {
    use natter_store::{DigestOutcome, EmailAddress};
    let s = &*f.store;
    let [ann, bob, cy] = users(s, ["ann", "bob", "cy"]).await;
    let ab = s.create_direct(ann, bob).await.unwrap().0;
    let ac = s.create_direct(ann, cy).await.unwrap().0;
    let bc = s.create_direct(bob, cy).await.unwrap().0;
    let t0 = now();

    // Unverified: owed nothing. Verified with a stale address: refused.
    s.set_email(bob, Some("bob@example.test".into())).await.unwrap();
    assert_eq!(s.queue_digests(vec![bob], t0, 1_000).await.unwrap(), 0);
    assert!(!s.verify_email(bob, "old@example.test", t0).await.unwrap());
    assert!(s.verify_email(bob, "bob@example.test", t0).await.unwrap());
    let on_file = EmailAddress { email: "bob@example.test".into(), verified: true, digests: true };
    assert_eq!(s.email(bob).await.unwrap(), Some(on_file.clone()));
    s.set_email(bob, Some("bob@example.test".into())).await.unwrap();
    assert_eq!(s.email(bob).await.unwrap(), Some(on_file), "the same address stays verified");

    // Owed once (a second queueing keeps the first time), due at its time, with the unread
    // conversations, most recent first; cy (no address) is owed nothing.
    send(s, ab, ann, "a1", "x").await;
    send(s, bc, cy, "c1", "x").await;
    assert_eq!(s.queue_digests(vec![bob, cy], t0 + 500, 10_000).await.unwrap(), 1);
    assert_eq!(s.queue_digests(vec![bob], t0 + 900, 10_000).await.unwrap(), 0);
    assert!(s.claim_digests(t0 + 499, 60_000, 10).await.unwrap().is_empty(), "not due yet");
    let jobs = s.claim_digests(t0 + 500, 60_000, 10).await.unwrap();
    assert_eq!(jobs.len(), 1);
    assert_eq!((jobs[0].user, jobs[0].email.as_str()), (bob, "bob@example.test"));
    assert_eq!(jobs[0].conversations, vec![bc, ab]);
    assert!(s.claim_digests(t0 + 501, 60_000, 10).await.unwrap().is_empty(), "leased");
    s.finish_digest(bob, DigestOutcome::Sent { at: t0 + 600 }).await.unwrap();

    // The next is due no sooner than a period after the last.
    assert_eq!(s.queue_digests(vec![bob], t0 + 700, 10_000).await.unwrap(), 1);
    assert!(s.claim_digests(t0 + 10_599, 60_000, 10).await.unwrap().is_empty());
    let jobs = s.claim_digests(t0 + 10_600, 60_000, 10).await.unwrap();
    assert_eq!(jobs.len(), 1);
    // Read first: the job lists nothing (the server sends nothing).
    let read = |conv, seq| CursorUpdate {
        conversation: conv,
        user: bob,
        delivered: None,
        read: Some(seq),
    };
    s.set_cursors(vec![read(ab, 100), read(bc, 100)]).await.unwrap();
    s.finish_digest(bob, DigestOutcome::Retry { due_at: t0 + 10_700 }).await.unwrap();
    let jobs = s.claim_digests(t0 + 10_700, 60_000, 10).await.unwrap();
    assert_eq!(jobs[0].conversations, Vec::<ConversationId>::new());
    s.finish_digest(bob, DigestOutcome::Nothing).await.unwrap();

    // Unsubscribed (only with the address on file): owed nothing; a new address is not.
    assert!(!s.set_digests(bob, "other@example.test", false).await.unwrap());
    assert!(s.set_digests(bob, "bob@example.test", false).await.unwrap());
    send(s, ac, ann, "a2", "x").await;
    assert_eq!(s.queue_digests(vec![bob], t0, 1).await.unwrap(), 0);
    s.set_email(bob, Some("new@example.test".into())).await.unwrap();
    let new = EmailAddress { email: "new@example.test".into(), verified: false, digests: true };
    assert_eq!(s.email(bob).await.unwrap(), Some(new));
    s.set_email(bob, None).await.unwrap();
    assert_eq!(s.email(bob).await.unwrap(), None);
}

/// A search of `q` by `user` with no filter, newest first.
fn request(q: &str) -> natter_store::SearchRequest {
    natter_store::SearchRequest {
        query: natter_store::search::Query::parse(q).expect("a query"),
        conversation: None,
        sender: None,
        has_attachment: false,
        after: None,
        before: None,
        order: natter_store::SearchOrder::Newest,
        cursor: None,
        limit: 50,
    }
}

/// The seqs `user` finds with `r`, in order.
async fn found<S: Store>(s: &S, user: UserId, r: natter_store::SearchRequest) -> Vec<Seq> {
    s.search(user, r).await.expect("search").hits.iter().map(|h| h.seq).collect()
}

async fn search_matches_words_phrases_prefixes_across_scripts_and_accents<S: Store>(f: Fixture<S>) {
    let s = &*f.store;
    let [ann, bob] = users(s, ["ann", "bob"]).await;
    let (ab, _) = s.create_direct(ann, bob).await.unwrap();
    let deploy = send(s, ab, ann, "m1", "Deploying the new build tonight").await.seq;
    let creme = send(s, ab, bob, "m2", "La CRÈME brûlée était parfaite").await.seq;
    let tokyo = send(s, ab, ann, "m3", "明日は東京都に行きます").await.seq;
    let green = send(s, ab, bob, "m4", "the build is green, ship it").await.seq;
    let q = |text: &str| request(text);
    assert_eq!(found(s, ann, q("build")).await, vec![green, deploy], "newest first");
    assert_eq!(found(s, ann, q("BUILD tonight")).await, vec![deploy], "every word");
    assert_eq!(found(s, ann, q("deplo*")).await, vec![deploy], "a prefix");
    assert_eq!(found(s, ann, q("\"ship it\"")).await, vec![green], "a phrase");
    assert!(found(s, ann, q("\"it ship\"")).await.is_empty(), "a phrase is in order");
    assert_eq!(found(s, ann, q("creme brulee")).await, vec![creme], "accents folded");
    assert_eq!(found(s, ann, q("crème")).await, vec![creme]);
    assert_eq!(found(s, ann, q("東京")).await, vec![tokyo], "CJK inside a sentence");
    assert!(found(s, ann, q("京東")).await.is_empty());
    assert!(found(s, ann, q("nothing")).await.is_empty());
    // Relevance: the message with the word twice first.
    let twice = send(s, ab, ann, "m5", "green green").await.seq;
    let mut r = q("green");
    r.order = natter_store::SearchOrder::Relevance;
    assert_eq!(found(s, ann, r).await, vec![twice, green]);
    // The hit's text is the message as it reads now, for the snippet.
    let page = s.search(bob, q("tonight")).await.unwrap();
    assert_eq!(page.hits[0].text, "Deploying the new build tonight");
    assert_eq!((page.hits[0].sender, page.hits[0].conversation), (ann, ab));
}

async fn search_follows_edits_and_deletions_filters_and_pages_without_repeats<S: Store>(
    f: Fixture<S>,
) {
    let s = &*f.store;
    let [ann, bob] = users(s, ["ann", "bob"]).await;
    let (ab, _) = s.create_direct(ann, bob).await.unwrap();
    let old = send(s, ab, ann, "e1", "the old wording").await.seq;
    append(s, ab, ann, "e2", NewEntry::Edit { target: old, body: "the new phrasing".into() })
        .await
        .unwrap();
    assert!(found(s, bob, request("wording")).await.is_empty(), "an edit replaces the text");
    assert_eq!(found(s, bob, request("phrasing")).await, vec![old]);
    let gone = send(s, ab, bob, "e3", "delete this secret").await.seq;
    append(s, ab, bob, "e4", NewEntry::Delete { target: gone }).await.unwrap();
    assert!(found(s, ann, request("secret")).await.is_empty(), "a deletion removes it");
    // Attachment names are searched; the filter keeps messages with attachments.
    s.create_media(new_media("report", ann, "s1", 10)).await.unwrap();
    let pic = append(s, ab, ann, "e5", with_media("see attached", &["report"])).await.unwrap().seq;
    assert_eq!(found(s, bob, request("report.png")).await, vec![pic]);
    let plain = send(s, ab, ann, "e6", "see the report later").await.seq;
    assert_eq!(found(s, bob, request("report")).await, vec![plain, pic]);
    let mut r = request("report");
    r.has_attachment = true;
    assert_eq!(found(s, bob, r).await, vec![pic]);
    // Sender and time filters.
    let mut r = request("see");
    r.sender = Some(bob);
    assert!(found(s, bob, r).await.is_empty());
    let all = s.search(bob, request("see")).await.unwrap();
    let (t_pic, t_plain) = (all.hits[1].ts, all.hits[0].ts);
    let mut r = request("see");
    r.before = Some(t_plain);
    let before: Vec<Seq> = found(s, bob, r).await;
    assert!(!before.contains(&plain) && (t_pic == t_plain || before == vec![pic]));
    let mut r = request("see");
    r.after = Some(t_plain);
    assert!(found(s, bob, r).await.contains(&plain));

    // Pages of 3 over 10 hits: every hit once, in order, in both orders.
    let mut want = Vec::new();
    for i in 0..10 {
        want.push(send(s, ab, ann, &format!("p{i}"), &format!("page word {i}")).await.seq);
    }
    want.reverse();
    for order in [natter_store::SearchOrder::Newest, natter_store::SearchOrder::Relevance] {
        let mut got = Vec::new();
        let mut cursor = None;
        loop {
            let mut r = request("page word");
            r.order = order;
            r.limit = 3;
            r.cursor = cursor;
            let page = s.search(bob, r).await.unwrap();
            got.extend(page.hits.iter().map(|h| h.seq));
            match page.next {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        let mut sorted = got.clone();
        sorted.sort_unstable_by(|a, b| b.cmp(a));
        sorted.dedup();
        assert_eq!(sorted.len(), got.len(), "{order:?}: no repeats in {got:?}");
        assert_eq!(sorted, want, "{order:?}: no misses");
        if order == natter_store::SearchOrder::Newest {
            assert_eq!(got, want, "newest first");
        }
    }
    let mut r = request("page");
    r.cursor = Some("r3".into());
    assert_eq!(code(s.search(bob, r).await), ErrorCode::BadRequest, "a cursor of the other order");
}

async fn search_shows_only_what_the_user_may_read<S: Store>(f: Fixture<S>) {
    let s = &*f.store;
    let [ann, bob, cy, dee] = users(s, ["ann", "bob", "cy", "dee"]).await;
    contacts(s, ann, &[bob, cy, dee]).await;
    let g = group(s, ann, "team", &[bob]).await;
    let before_cy = send(s, g, ann, "s1", "launch plan alpha").await.seq;
    add_member(s, ann, g, cy, Role::Member).await.unwrap();
    let after_cy = send(s, g, ann, "s2", "launch plan beta").await.seq;
    s.change_group(ann, g, GroupChange::RemoveMember { user: bob }).await.unwrap();
    send(s, g, ann, "s3", "launch plan gamma").await;
    let (ad, _) = s.create_direct(ann, dee).await.unwrap();
    send(s, ad, ann, "s4", "launch plan delta").await;

    let plan = |user| s.search(user, request("launch plan"));
    // Cy joined after the first: from there on only.
    let cy_found: Vec<Seq> = plan(cy).await.unwrap().hits.iter().map(|h| h.seq).collect();
    assert!(cy_found.contains(&after_cy) && !cy_found.contains(&before_cy), "{cy_found:?}");
    // Bob left: nothing of the group any more; dee sees her chat only.
    assert!(plan(bob).await.unwrap().hits.is_empty());
    let dee_hits = plan(dee).await.unwrap().hits;
    assert_eq!(dee_hits.iter().map(|h| h.conversation).collect::<Vec<_>>(), vec![ad]);
    // The conversation filter keeps that conversation's hits, all of them, for every query.
    for q in ["launch", "plan*", "\"launch plan\""] {
        for (conv, want) in [(g, 3), (ad, 1)] {
            let mut r = request(q);
            r.conversation = Some(conv);
            let hits = s.search(ann, r).await.unwrap().hits;
            assert_eq!(hits.len(), want, "{q} in {conv:?}");
            assert!(hits.iter().all(|h| h.conversation == conv), "{q} in {conv:?}");
        }
    }
    // Guessing a conversation id finds nothing, for every query.
    for q in ["launch", "plan*", "\"plan alpha\"", "alpha"] {
        let mut r = request(q);
        r.conversation = Some(g);
        assert!(s.search(dee, r).await.unwrap().hits.is_empty(), "{q}");
    }
}

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

async fn a_users_messages_and_media_are_listed_by_page_for_the_export<S: Store>(f: Fixture<S>) {
    let s = &*f.store;
    let [ann, bob, cy] = users(s, ["ann", "bob", "cy"]).await;
    let (ab, _) = s.create_direct(ann, bob).await.unwrap();
    let (ac, _) = s.create_direct(ann, cy).await.unwrap();
    let a1 = send(s, ab, ann, "a1", "one").await;
    send(s, ab, bob, "b1", "not ann's").await;
    let c1 = send(s, ac, ann, "c1", "draft").await;
    let c2 = send(s, ac, ann, "c2", "oops").await;
    append(s, ac, ann, "e", NewEntry::Edit { target: c1.seq, body: "final".to_owned() })
        .await
        .unwrap();
    append(s, ac, ann, "d", NewEntry::Delete { target: c2.seq }).await.unwrap();
    let a2 = send(s, ab, ann, "a2", "two").await;

    // Pages of two, by conversation then seq, each with its current text; deleted ones and
    // other people's are left out.
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = s.messages_by(ann, after, 2).await.unwrap();
        assert!(page.len() <= 2);
        let Some(last) = page.last() else { break };
        after = Some((last.conversation, last.seq));
        seen.extend(page.iter().map(|e| (e.conversation, e.seq, e.state.clone().unwrap().body)));
    }
    let mut want = vec![
        (ab, a1.seq, "one".to_owned()),
        (ab, a2.seq, "two".to_owned()),
        (ac, c1.seq, "final".to_owned()),
    ];
    want.sort_by_key(|(c, seq, _)| (*c, *seq));
    assert_eq!(seen, want);
    assert!(s.messages_by(cy, None, 10).await.unwrap().is_empty());

    for (id, sha) in [("m2", "s2"), ("m1", "s1"), ("m3", "s3")] {
        s.create_media(new_media(id, ann, sha, 10)).await.unwrap();
    }
    s.create_media(new_media("x1", bob, "s4", 10)).await.unwrap();
    let first = s.media_of(ann, None, 2).await.unwrap();
    let ids: Vec<_> = first.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids, ["m1", "m2"]);
    let rest = s.media_of(ann, Some("m2".to_owned()), 2).await.unwrap();
    assert_eq!(rest.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(), ["m3"]);
    assert!(s.media_of(cy, None, 2).await.unwrap().is_empty());
}

async fn a_deleted_user_loses_logins_and_profile_and_later_the_handle<S: Store>(f: Fixture<S>) {
    let s = &*f.store;
    let [ann, bob] = users(s, ["ann", "bob"]).await;
    let (ab, _) = s.create_direct(ann, bob).await.unwrap();
    let m = send(s, ab, ann, "c1", "bye").await;
    let d1 = s.create_device(ann, "phone", [1; 32]).await.unwrap();
    let d2 = s.create_device(ann, "laptop", [2; 32]).await.unwrap();
    let update = ProfileUpdate { display_name: Some("Ann".to_owned()), ..Default::default() };
    s.set_profile(ann, update).await.unwrap();
    let mut removed = s.delete_user(ann).await.unwrap();
    removed.sort();
    assert_eq!(removed, vec![d1, d2]);
    assert!(s.authenticate([1; 32]).await.unwrap().is_none());
    assert!(s.user_by_handle("ann").await.unwrap().is_none(), "not found by handle");
    let shown = s.users(&[ann]).await.unwrap().pop().expect("still there by id");
    assert!(shown.deleted);
    assert_eq!(shown.display_name, None, "the profile went");
    assert!(s.search_users(bob, "ann", true, 10).await.unwrap().is_empty());
    assert_eq!(s.conversation(bob, ab).await.unwrap().peer.map(|p| p.deleted), Some(true));
    // Nobody starts a new conversation with it.
    let [cy] = users(s, ["cy"]).await;
    assert_eq!(code(s.create_direct(cy, ann).await), ErrorCode::NotFound);
    assert_eq!(code(s.create_group(bob, "g", &[ann]).await), ErrorCode::NotFound);
    // Nor adds it to a group, though bob shares a conversation with it.
    let g = s.create_group(bob, "later", &[]).await.unwrap().id;
    assert_eq!(code(s.add_member(bob, g, ann, Role::Member).await), ErrorCode::NotFound);
    assert!(log(s, ab).await.iter().any(|e| e.seq == m.seq && e.sender == ann), "messages stay");
    // The handle stays taken until freed, then anyone may take it.
    assert_eq!(code(s.create_user("ann", "hash").await), ErrorCode::Conflict);
    assert_eq!(s.free_deleted_handles(0).await.unwrap(), 0, "not deleted before the epoch");
    assert_eq!(s.free_deleted_handles(i64::MAX).await.unwrap(), 1);
    assert_eq!(s.free_deleted_handles(i64::MAX).await.unwrap(), 0, "once");
    let new_ann = s.create_user("ann", "hash").await.unwrap();
    assert_ne!(new_ann, ann);
    assert!(s.users(&[ann]).await.unwrap()[0].handle.starts_with("~deleted-"));
}

async fn memberships_list_every_conversation_of_the_user<S: Store>(f: Fixture<S>) {
    let s = &*f.store;
    let [me, p, q] = users(s, ["me", "p", "q"]).await;
    assert!(s.memberships(me).await.expect("none yet").is_empty());
    let (direct, _) = s.create_direct(p, me).await.expect("direct");
    let g1 = group(s, me, "mine", &[p]).await;
    // (p, not q, owns it: q shares no conversation with me and could only invite me.)
    let g2 = group(s, p, "theirs", &[me]).await;
    s.create_direct(p, q).await.expect("not mine");
    send(s, g2, p, "p1", "hi").await;

    let by_id = |list: Vec<natter_proto::ConversationSummary>| {
        list.into_iter().map(|c| (c.id, (c.kind, c.role, c.last_seq))).collect::<BTreeMap<_, _>>()
    };
    let want = BTreeMap::from([
        (direct, (ConversationKind::Direct, Role::Member, 1)),
        (g1, (ConversationKind::Group, Role::Owner, 1)),
        (g2, (ConversationKind::Group, Role::Member, 2)),
    ]);
    assert_eq!(by_id(s.memberships(me).await.expect("memberships")), want);
    // The same conversations as the full list.
    assert_eq!(by_id(s.conversations(me, None, 100).await.expect("list")), want);

    s.change_group(me, g2, GroupChange::RemoveMember { user: me }).await.expect("leave");
    let ids: BTreeSet<ConversationId> =
        s.memberships(me).await.expect("memberships").iter().map(|c| c.id).collect();
    assert_eq!(ids, BTreeSet::from([direct, g1]));
}

// ---- commit feed and close ----

async fn commit_feed_carries_every_committed_entry_in_commit_order<S: Store>(mut f: Fixture<S>) {
    let s = &*f.store;
    let [a, b, c] = users(s, ["a", "b", "c"]).await;
    let (ab, _) = s.create_direct(a, b).await.expect("direct");
    let g = group(s, a, "g", &[b]).await;
    // Interleaved, pipelined appends to two conversations, with refused ones among them.
    let mut pending = Vec::new();
    for i in 0..60 {
        let conv = if i % 3 == 0 { g } else { ab };
        let sender = if i % 2 == 0 { a } else { b };
        let app = append_of(conv, sender, &format!("m{i}"), msg(&format!("{i}")));
        pending.push((true, s.submit_append(app).await.expect("queued")));
        if i % 10 == 0 {
            let app = append_of(ab, c, &format!("x{i}"), msg("not a member"));
            pending.push((false, s.submit_append(app).await.expect("queued")));
        }
    }
    for (ok, p) in pending {
        assert_eq!(p.wait().await.is_ok(), ok);
    }
    // c, a stranger, is invited (nothing on the feed) and accepts (a `member_added`).
    invite(s, a, g, c, Role::Member).await.expect("invite");
    s.accept_invitation(c, g).await.expect("accept");
    // A retry is answered from the log: no new entry, nothing on the feed.
    assert_eq!(send(s, ab, b, "m1", "again").await.seq, 2);

    let mut expected: HashMap<ConversationId, Vec<Entry>> = HashMap::new();
    for conv in [ab, g] {
        let mut entries = log(s, conv).await;
        for e in &mut entries {
            e.state = None;
        }
        expected.insert(conv, entries);
    }
    let n_committed: usize = expected.values().map(Vec::len).sum();
    let mut fed = Vec::new();
    while fed.len() < n_committed {
        let batch = f.feed_rx.recv().await.expect("the feed is open");
        assert!(!batch.is_empty(), "no empty batches");
        fed.extend(batch);
    }
    assert_eq!(fed.len(), n_committed);
    assert!(f.feed_rx.try_recv().is_err(), "nothing more on the feed");
    let mut per_conv: HashMap<ConversationId, Vec<Entry>> = HashMap::new();
    // Each fed entry names its conversation's latest membership change up to itself.
    let mut membership: HashMap<ConversationId, Seq> = HashMap::new();
    for committed in fed {
        let Committed { entry: e, members_seq } = committed;
        assert_eq!(e.state, None, "the feed carries entries as committed");
        if matches!(
            e.body,
            EntryBody::Created { .. }
                | EntryBody::MemberAdded { .. }
                | EntryBody::MemberRemoved { .. }
        ) {
            membership.insert(e.conversation, e.seq);
        }
        assert_eq!(Some(members_seq), membership.get(&e.conversation).copied(), "{e:?}");
        per_conv.entry(e.conversation).or_default().push(e);
    }
    assert_eq!(membership[&g], 22, "the member added last");
    assert_eq!(membership[&ab], 1, "created");
    // In commit order: per conversation, exactly the log, in seq order.
    assert_eq!(per_conv, expected);
    assert_eq!(expected[&g].len(), 1 + 20 + 1);
    assert_eq!(expected[&ab].len(), 1 + 40);
}

async fn close_flushes_then_writes_fail_unavailable<S: Store>(mut f: Fixture<S>) {
    let s = &*f.store;
    let [a, b] = users(s, ["a", "b"]).await;
    let (ab, _) = s.create_direct(a, b).await.expect("direct");
    let mut pending = Vec::new();
    for i in 0..50 {
        let app = append_of(ab, a, &format!("m{i}"), msg("queued before close"));
        pending.push(s.submit_append(app).await.expect("queued"));
    }
    s.close().await;
    // What was queued before close is committed.
    let mut got = Vec::new();
    for p in pending {
        got.push(p.wait().await.expect("flushed by close").seq);
    }
    assert_eq!(got, (2..=51).collect::<Vec<_>>());

    assert_eq!(code(s.create_user("late", "h").await), ErrorCode::Unavailable);
    assert_eq!(code(append(s, ab, a, "late", msg("late")).await), ErrorCode::Unavailable);
    assert_eq!(code(s.create_direct(a, b).await), ErrorCode::Unavailable);
    let title = GroupChange::SetTitle { title: "t".to_owned() };
    assert_eq!(code(s.change_group(a, ConversationId(1), title).await), ErrorCode::Unavailable);
    let cursor = CursorUpdate { conversation: ab, user: b, delivered: Some(1), read: None };
    assert_eq!(code(s.set_cursors(vec![cursor]).await), ErrorCode::Unavailable);

    // The commit feed carried everything committed, then ended: routing stops with the store.
    let mut n = 0;
    while let Some(batch) = f.feed_rx.recv().await {
        n += batch.len();
    }
    assert_eq!(n, 51);
}

// ---- SQLite ----

/// Under steady writes the WAL stays near `wal_limit_bytes`. Passive checkpoints alone never
/// restart it while the writer keeps committing (the search benchmark found 34 GB of WAL
/// beside a 372 MB database after 1,000,000 messages).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_wal_stays_bounded_under_steady_writes() {
    const LIMIT: u64 = 256 * 1024;
    let (feed_tx, mut feed_rx) = mpsc::channel(1024);
    tokio::spawn(async move { while feed_rx.recv().await.is_some() {} });
    let limits = StoreLimits { wal_limit_bytes: LIMIT, ..limits() };
    let (store, dir) = SqliteStore::temporary(limits, feed_tx).expect("store");
    let store = Arc::new(store);
    let wal = dir.path().join("natter.db-wal");
    let hub = user(&*store, "hub").await;
    let mut convs = Vec::new();
    for i in 0..40 {
        let peer = user(&*store, &format!("p{i}")).await;
        convs.push((store.create_direct(hub, peer).await.expect("direct").0, peer));
    }
    let convs = Arc::new(convs);
    let body = "x".repeat(200);
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (store, convs, body) = (store.clone(), convs.clone(), body.clone());
            tokio::spawn(async move {
                for i in 0..2_500 {
                    let (conv, peer) = convs[(i * 7 + w) % convs.len()];
                    let id = format!("w{w}-{i}");
                    append(&*store, conv, peer, &id, msg(&body)).await.expect("append");
                }
            })
        })
        .collect();
    for w in writers {
        within(async { w.await.expect("writer") }).await;
    }
    // A WAL file only grows until it is restarted, so its size now is the largest it was:
    // about one checkpoint tick of writes past the limit, while without restarts it holds
    // every page the 10,000 appends wrote.
    let size = std::fs::metadata(&wal).expect("the WAL").len();
    assert!(size < 32 * LIMIT, "the WAL grew to {size} bytes (limit {LIMIT})");
}

// ---- PostgreSQL failures ----

/// Connections lost under the store (a failover, a restart) cost a retry, not an error: the
/// batch runs again on a fresh connection and seqs stay contiguous.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_batches_survive_lost_connections() {
    let Some((store, guard)) = postgres_with_db().await else { return };
    within(async {
        let s = &store;
        let [a, b] = users(s, ["a", "b"]).await;
        let (ab, _) = s.create_direct(a, b).await.expect("direct");
        send(s, ab, a, "m1", "before").await;
        let killed = terminate_backends(&guard).await;
        assert!(killed > 0, "the store's pooled connections were terminated");
        assert_eq!(send(s, ab, a, "m2", "after").await.seq, 3);
        assert_contiguous(&log(s, ab).await, 1, 3);
    })
    .await;
}

/// A database that is gone answers `Unavailable` (retryable), and nothing is acked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_down_is_unavailable() {
    let Some((store, guard)) = postgres_with_db().await else { return };
    within(async {
        let s = &store;
        let [a, b] = users(s, ["a", "b"]).await;
        let (ab, _) = s.create_direct(a, b).await.expect("direct");
        pg_admin(&guard.admin, &format!("DROP DATABASE {} WITH (FORCE)", guard.name)).await;
        assert_eq!(code(append(s, ab, a, "m1", msg("lost")).await), ErrorCode::Unavailable);
        assert_eq!(code(s.create_user("c", "h").await), ErrorCode::Unavailable);
        assert_eq!(code(s.user_handle(a).await), ErrorCode::Unavailable);
    })
    .await;
}

/// Two stores on one database, as two nodes of a cluster: appends to the same
/// conversations from both, pipelined and interleaved (several conversations per batch, in
/// different orders on each side), commit as one contiguous log per conversation with each
/// `client_msg_id` once; a retry through the other store answers the original ack.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_two_stores_share_one_log() {
    let Some((first, guard)) = postgres_with_db().await else { return };
    let mut config = guard.admin.clone();
    config.dbname(&guard.name);
    let (feed_tx, _) = mpsc::channel(1);
    let second = PgStore::open(config, limits(), feed_tx).await.expect("second store");
    within(async {
        let [a, b, c] = users(&first, ["a", "b", "c"]).await;
        let ab = first.create_direct(a, b).await.expect("direct").0;
        contacts(&first, c, &[a, b]).await;
        let convs =
            [group(&first, a, "g1", &[b, c]).await, group(&second, b, "g2", &[a, c]).await, ab];
        const PER_SENDER: usize = 150;
        let stores = [&first, &second];
        let mut pending = Vec::new();
        for i in 0..PER_SENDER {
            for (k, sender) in [a, b, c].into_iter().enumerate() {
                // Each sender goes through both stores and walks the conversations in its
                // own order, so batches on the two sides take them in different orders.
                let store = stores[(i + k) % 2];
                let conv = convs[(i * (k + 1)) % 3];
                if conv == convs[2] && sender == c {
                    continue;
                }
                let cmid = format!("{}-{i}", sender.0);
                let app = append_of(conv, sender, &cmid, msg(&cmid));
                pending.push((conv, cmid, store.submit_append(app).await.expect("queued")));
            }
        }
        let mut acks = Vec::new();
        for (conv, cmid, p) in pending {
            let ack = p.wait().await.unwrap_or_else(|e| panic!("append {cmid}: {e}"));
            assert_eq!(ack.conversation, conv);
            acks.push((cmid, ack));
        }
        for conv in convs {
            let entries = log(&first, conv).await;
            assert_contiguous(&entries, 1, entries.len() as Seq);
            assert_eq!(entries, log(&second, conv).await, "both stores read one log");
            let mut ids: Vec<&str> =
                entries.iter().filter_map(|e| e.client_msg_id.as_deref()).collect();
            let n = ids.len();
            ids.sort_unstable();
            ids.dedup();
            assert_eq!(ids.len(), n, "each client_msg_id once in {conv:?}");
        }
        for (cmid, ack) in acks.iter().step_by(17) {
            let sender = UserId(cmid.split('-').next().unwrap().parse().unwrap());
            // The retry goes through whichever store did not take the original.
            for store in stores {
                let again = append(store, ack.conversation, sender, cmid, msg("retry")).await;
                assert_eq!(again.expect("retry"), *ack, "{cmid}");
            }
        }
    })
    .await;
    second.close().await;
    first.close().await;
}

/// Two stores on one database (two nodes) inviting one user at once, each to groups of its
/// own: the invitee's pending invitations stop at the cap, not at the cap per node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_two_stores_keep_the_invitation_cap() {
    let Some((first, guard)) = postgres_with_db().await else { return };
    let mut config = guard.admin.clone();
    config.dbname(&guard.name);
    let (feed_tx, _) = mpsc::channel(1);
    let second = PgStore::open(config, limits(), feed_tx).await.expect("second store");
    let stores = [Arc::new(first), Arc::new(second)];
    within(async {
        let x = user(&*stores[0], "x").await;
        let mut groups = Vec::new();
        for i in 0..20 {
            let owner = user(&*stores[0], &format!("o{i}")).await;
            groups.push((owner, group(&*stores[0], owner, "g", &[]).await));
        }
        // All submitted at once: each store commits its half in one batch, the two batches
        // running side by side.
        let start = Arc::new(tokio::sync::Barrier::new(groups.len()));
        let tasks: Vec<_> = groups
            .into_iter()
            .enumerate()
            .map(|(i, (owner, g))| {
                let (store, start) = (stores[i % 2].clone(), start.clone());
                tokio::spawn(async move {
                    start.wait().await;
                    store.add_member(owner, g, x, Role::Member).await
                })
            })
            .collect();
        let mut n_invited = 0;
        for task in tasks {
            match task.await.expect("task") {
                Ok(Added::Invited(_)) => n_invited += 1,
                Ok(added) => panic!("x is nobody's contact: {added:?}"),
                Err(err) => assert_eq!(err.to_string(), "conflict: too many pending invitations"),
            }
        }
        assert_eq!(n_invited, MAX_PENDING_INVITATIONS);
        assert_eq!(
            stores[1].invitations(x).await.expect("list").len(),
            MAX_PENDING_INVITATIONS as usize
        );
    })
    .await;
    for store in stores {
        store.close().await;
    }
}

/// `text_search_config = english` stems on PostgreSQL: a word finds its other forms, both in
/// what is indexed and in the query, while `simple` (the suite's default) does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_search_stems_in_the_configured_language() {
    let (feed_tx, _) = mpsc::channel(1);
    let english = StoreLimits { text_search_config: "english".to_owned(), ..limits() };
    let Some((store, _guard)) = scratch_postgres(english, feed_tx).await else { return };
    let Some((simple, _simple_guard)) = postgres_with_db().await else { return };
    within(async {
        for (s, stems) in [(&store, true), (&simple, false)] {
            let [ann, bob] = users(s, ["ann", "bob"]).await;
            let (ab, _) = s.create_direct(ann, bob).await.unwrap();
            let deployed = send(s, ab, ann, "m1", "We deployed the builds").await.seq;
            let expect = if stems { vec![deployed] } else { vec![] };
            assert_eq!(found(s, bob, request("deploying")).await, expect, "stems: {stems}");
            assert_eq!(found(s, bob, request("build")).await, expect, "stems: {stems}");
            assert_eq!(found(s, bob, request("deployed builds")).await, vec![deployed]);
        }
    })
    .await;
}

async fn postgres_with_db() -> Option<(PgStore, ScratchDb)> {
    // Nobody reads this feed: once its receiver is gone the store only logs that.
    let (feed_tx, _) = mpsc::channel(1);
    scratch_postgres(limits(), feed_tx).await
}

/// Terminates every connection to the scratch database; returns how many there were.
async fn terminate_backends(db: &ScratchDb) -> i64 {
    let (client, conn) = db.admin.connect(tokio_postgres::NoTls).await.expect("connect");
    let conn = tokio::spawn(conn);
    let row = client
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = $1",
            &[&db.name],
        )
        .await
        .expect("terminate");
    drop(client);
    let _ = conn.await;
    row.get(0)
}

// ---- media ----

fn new_media(id: &str, owner: UserId, sha: &str, size: u64) -> NewMedia {
    NewMedia {
        id: id.to_owned(),
        owner,
        sha256: sha.to_owned(),
        size,
        content_type: "image/png".to_owned(),
        name: Some(format!("{id}.png")),
        width: Some(640),
        height: Some(480),
        placeholder: Some("LKO2?U%2Tw=w".to_owned()),
        thumbnail: Some(NewThumbnail {
            sha256: format!("thumb-{sha}"),
            size: 10,
            width: 64,
            height: 48,
        }),
        quota_bytes: 1000,
    }
}

fn with_media(body: &str, ids: &[&str]) -> NewEntry {
    NewEntry::Message {
        body: body.to_owned(),
        reply_to: None,
        attachments: ids.iter().map(|s| (*s).to_owned()).collect(),
        mentions: Vec::new(),
    }
}

async fn media_round_trip_and_quota<S: Store>(f: Fixture<S>) {
    let s = &*f.store;
    let [a, b] = users(s, ["a", "b"]).await;
    s.create_media(new_media("m1", a, "sha1", 600)).await.expect("create");
    let m = s.media("m1").await.expect("media").expect("found");
    assert_eq!((m.owner, m.sha256.as_str(), m.size), (a, "sha1", 600));
    assert_eq!((m.width, m.height, m.name.as_deref()), (Some(640), Some(480), Some("m1.png")));
    assert_eq!(
        m.thumbnail.as_ref().map(|(sha, d)| (sha.as_str(), d.width)),
        Some(("thumb-sha1", 64))
    );
    let att = m.attachment();
    assert_eq!(att.thumbnail.map(|d| d.height), Some(48));
    assert!(att.url.is_none());
    assert!(s.media("nope").await.expect("media").is_none());
    assert_eq!(s.media_usage(a).await.expect("usage"), 600);
    assert_eq!(s.media_usage(b).await.expect("usage"), 0);
    // 600 + 401 > 1000 (thumbnails do not count); exactly the quota is fine.
    assert_eq!(
        code(s.create_media(new_media("m2", a, "sha2", 401)).await),
        ErrorCode::QuotaExceeded
    );
    s.create_media(new_media("m3", a, "sha3", 400)).await.expect("up to the quota");
    assert_eq!(s.media_usage(a).await.expect("usage"), 1000);
    s.create_media(new_media("m4", b, "sha4", 1000)).await.expect("b's own quota");
}

async fn appends_carry_the_senders_own_media<S: Store>(f: Fixture<S>) {
    let s = &*f.store;
    let [a, b] = users(s, ["a", "b"]).await;
    let (conv, _) = s.create_direct(a, b).await.expect("direct");
    s.create_media(new_media("a1", a, "s1", 10)).await.expect("a1");
    s.create_media(new_media("a2", a, "s2", 10)).await.expect("a2");
    s.create_media(new_media("b1", b, "s3", 10)).await.expect("b1");
    let ack = append(s, conv, a, "c1", with_media("look", &["a2", "a1"])).await.expect("send");
    let again = append(s, conv, a, "c1", with_media("look", &["b1"])).await.expect("repeat");
    assert_eq!(again.seq, ack.seq, "a repeat gets the earlier ack");
    assert_eq!(code(append(s, conv, a, "c2", with_media("x", &["b1"])).await), ErrorCode::NotFound);
    assert_eq!(code(append(s, conv, a, "c3", with_media("x", &["zz"])).await), ErrorCode::NotFound);
    assert_eq!(
        code(append(s, conv, a, "c4", with_media("x", &["a1", "a1"])).await),
        ErrorCode::BadRequest
    );
    let eleven: Vec<String> = (0..11).map(|i| format!("x{i}")).collect();
    let refs: Vec<&str> = eleven.iter().map(String::as_str).collect();
    assert_eq!(code(append(s, conv, a, "c5", with_media("x", &refs)).await), ErrorCode::BadRequest);
    let entry = log(s, conv).await.into_iter().find(|e| e.seq == ack.seq).expect("entry");
    let ids: Vec<&str> = entry.body.attachments().iter().map(|a| a.id.as_str()).collect();
    assert_eq!(ids, ["a2", "a1"]);
    assert_eq!(entry.body.attachments()[0], s.media("a2").await.unwrap().unwrap().attachment());
    // Edits keep them; deletion drops them and the refs.
    let edit = NewEntry::Edit { target: ack.seq, body: "new".to_owned() };
    append(s, conv, a, "c6", edit).await.expect("edit");
    let entry = log(s, conv).await.into_iter().find(|e| e.seq == ack.seq).expect("entry");
    assert_eq!(entry.body.attachments().len(), 2);
    assert!(s.media_access(b, "a1").await.expect("access"));
    append(s, conv, a, "c7", NewEntry::Delete { target: ack.seq }).await.expect("delete");
    let entry = log(s, conv).await.into_iter().find(|e| e.seq == ack.seq).expect("entry");
    assert!(entry.body.attachments().is_empty(), "deleted message keeps no attachments");
    assert!(!s.media_access(b, "a1").await.expect("access"), "refs went with the message");
    assert!(s.media_access(a, "a1").await.expect("owner still"));
}

async fn media_access_follows_ownership_and_membership<S: Store>(f: Fixture<S>) {
    let s = &*f.store;
    let [o, a, b, x] = users(s, ["o", "a", "b", "x"]).await;
    contacts(s, o, &[a, b]).await;
    let g = group(s, o, "g", &[a, b]).await;
    s.create_media(new_media("m", o, "s", 10)).await.expect("m");
    assert!(s.media_access(o, "m").await.unwrap());
    assert!(!s.media_access(a, "m").await.unwrap(), "not attached yet");
    append(s, g, o, "c1", with_media("hi", &["m"])).await.expect("send");
    assert!(s.media_access(a, "m").await.unwrap());
    assert!(s.media_access(b, "m").await.unwrap());
    assert!(!s.media_access(x, "m").await.unwrap(), "non-member");
    s.change_group(o, g, GroupChange::RemoveMember { user: b }).await.expect("remove");
    assert!(!s.media_access(b, "m").await.unwrap(), "former member");
    assert!(!s.media_access(o, "unknown").await.unwrap());
}

async fn collect_media_keeps_what_is_attached_and_shared<S: Store>(f: Fixture<S>) {
    let s = &*f.store;
    let [a, b] = users(s, ["a", "b"]).await;
    let (conv, _) = s.create_direct(a, b).await.expect("direct");
    let plain = |id: &str, sha: &str| {
        let mut m = new_media(id, a, sha, 10);
        m.thumbnail = None;
        m
    };
    s.create_media(plain("old", "s-old")).await.unwrap();
    s.create_media(plain("kept", "s-kept")).await.unwrap();
    s.create_media(plain("d1", "s-dup")).await.unwrap();
    s.create_media(plain("d2", "s-dup")).await.unwrap();
    let ack = append(s, conv, a, "c1", with_media("x", &["kept", "d2"])).await.unwrap();
    let far = i64::MAX / 2;
    let mut got = s.collect_media(far, far).await.expect("collect");
    got.blobs.sort();
    assert_eq!(got.media, 2, "old and d1");
    assert_eq!(got.blobs, ["s-old"], "s-dup is still d2's");
    assert!(s.media("old").await.unwrap().is_none());
    assert!(s.media("kept").await.unwrap().is_some());
    // Nothing more to do.
    assert_eq!(s.collect_media(far, far).await.unwrap(), natter_store::Collected::default());
    // Marked orphaned, but not yet old enough to go.
    append(s, conv, a, "c2", NewEntry::Delete { target: ack.seq }).await.unwrap();
    let got = s.collect_media(far, 0).await.unwrap();
    assert_eq!((got.media, got.blobs.len()), (2, 0));
    let mut got = s.collect_media(far, far).await.unwrap();
    got.blobs.sort();
    assert_eq!(got.blobs, ["s-dup", "s-kept"]);
    // An upload of an orphaned object revives its blob row.
    s.create_media(plain("again", "s-x")).await.unwrap();
    assert_eq!(s.collect_media(0, far).await.unwrap(), natter_store::Collected::default());
}

//! Cross-node guarantees through a faulty bus, in process: three nodes on one in-process
//! bus that loses 10% of its messages (telling the node that lost them, as Redis tells of
//! the disconnect that loses messages), duplicates 10% and delays each up to 20 ms (so
//! messages overtake each other), over many seeds. Every session on every node must see
//! each of its conversations contiguous, exactly once, equal to the store.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use futures_util::future::join_all;
use natter_proto::{ConversationId, Entry, Seq};
use natter_server::Faults;
use natter_testkit::{TestCluster, TestUser, WsClient};

const SEEDS: u64 = 8;
/// Messages each member sends to each of its conversations, per seed.
const PER_SENDER: usize = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_session_on_every_node_sees_each_conversation_once_in_order_through_a_faulty_bus() {
    for seed in 1..=SEEDS {
        run(seed).await;
    }
}

/// One seed: a small group (routed to each member's node), a large one (on its own topic)
/// and a direct pair, spread over three nodes; every member sends through every node at
/// once.
async fn run(seed: u64) {
    let faults = Faults { drop: 0.1, duplicate: 0.1, max_delay: Duration::from_millis(20), seed };
    let cluster = TestCluster::start(3, faults, |cfg| cfg.limits.large_group_threshold = 4).await;
    let n0 = cluster.node(0);
    let mut users = Vec::new();
    for i in 0..6 {
        users.push(n0.user(&format!("u{i}")).await);
    }
    let others: Vec<&TestUser> = users[1..].iter().collect();
    // The owner's contacts, so that the groups' creation adds them.
    n0.contacts(&users[0], &others).await;
    let small = n0.create_group(&users[0], "small", &[&users[1], &users[2]]).await;
    let large = n0.create_group(&users[0], "large", &others).await;
    let direct = n0.create_direct(&users[3], &users[4]).await;
    let members: Vec<(ConversationId, Vec<usize>)> =
        vec![(small, vec![0, 1, 2]), (large, (0..6).collect()), (direct, vec![3, 4])];

    // User i on node i % 3, and user 0 on node 1 too; each synced before anything is sent.
    let mut sessions: Vec<Session> = Vec::new();
    for (user, node) in (0..6).map(|i| (i, i % 3)).chain([(0, 1)]) {
        let mut ws = cluster.node(node).ws(&users[user]).await;
        let mut seen: BTreeMap<ConversationId, Vec<Entry>> = BTreeMap::new();
        for conv in ws.sync(BTreeMap::new()).await {
            seen.insert(conv.conversation.id, conv.entries);
        }
        let convs = members.iter().filter(|(_, m)| m.contains(&user)).map(|(c, _)| *c).collect();
        sessions.push(Session { user, node, ws, seen, convs });
    }

    let (nodes, senders) = (&cluster.nodes, &users);
    let sends = members.iter().flat_map(|(conv, who)| {
        let conv = *conv;
        who.iter().map(move |&m| async move {
            for k in 0..PER_SENDER {
                let node = &nodes[(m + k) % 3];
                let id = format!("s{seed}-{m}-{k}");
                node.send_rest(&senders[m], conv, &id, &format!("{m}:{k}")).await;
            }
        })
    });
    join_all(sends).await;

    // The log as the store has it, then a fence per conversation: once a session reads the
    // fence, nothing before it can still be on its way.
    let mut log: HashMap<ConversationId, Vec<(Seq, String)>> = HashMap::new();
    for (conv, who) in &members {
        let sender = &users[who[0]];
        let fence_id = format!("fence-{seed}");
        let fence = cluster.node(2).send_rest(sender, *conv, &fence_id, "fence").await;
        let entries = n0.all_entries(sender, *conv, 100).await;
        assert_eq!(entries.last().map(|e| e.seq), Some(fence.seq), "the fence is last");
        log.insert(*conv, entries.into_iter().map(|e| (e.seq, e.id)).collect());
    }

    for session in &mut sessions {
        session.read_up_to(&log).await;
        for conv in &session.convs {
            let got: Vec<(Seq, String)> =
                session.seen[conv].iter().map(|e| (e.seq, e.id.clone())).collect();
            assert_eq!(
                got, log[conv],
                "seed {seed}: user {} on node {} saw conversation {conv} differently from the store",
                session.user, session.node
            );
        }
    }
    cluster.stop().await;
}

struct Session {
    user: usize,
    node: usize,
    ws: WsClient,
    seen: BTreeMap<ConversationId, Vec<Entry>>,
    convs: Vec<ConversationId>,
}

impl Session {
    /// Reads live entries until every conversation of the session reached the end of the
    /// log; each must come right after the one before it.
    async fn read_up_to(&mut self, log: &HashMap<ConversationId, Vec<(Seq, String)>>) {
        let done = |seen: &BTreeMap<ConversationId, Vec<Entry>>, conv: &ConversationId| {
            seen.get(conv).and_then(|e| e.last()).map(|e| e.seq) == log[conv].last().map(|l| l.0)
        };
        while !self.convs.iter().all(|c| done(&self.seen, c)) {
            let entry = self.ws.next_entry().await;
            let list = self.seen.entry(entry.conversation).or_default();
            let expected = list.last().map_or(1, |e| e.seq + 1);
            assert_eq!(
                entry.seq, expected,
                "user {} on node {}: conversation {} jumped",
                self.user, self.node, entry.conversation
            );
            list.push(entry);
        }
    }
}

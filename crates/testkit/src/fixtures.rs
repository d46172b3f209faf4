//! Fixtures: the accounts, conversations and sessions most tests start from, so that a test
//! reads as the behaviour it checks. All of them work on any [`Endpoint`] (and so on a
//! [`TestServer`](crate::TestServer) and every node of a cluster).

use std::collections::BTreeMap;
use std::net::SocketAddr;

use anyhow::bail;
use natter_proto::{ConversationId, Seq, UserId};

use crate::http::Endpoint;
use crate::wait::within;
use crate::ws::WsClient;

/// The password of every account the kit registers.
pub const PASSWORD: &str = "correct horse battery";

/// A registered, logged-in user.
#[derive(Debug, Clone)]
pub struct TestUser {
    pub id: UserId,
    pub handle: String,
    pub token: String,
}

impl TestUser {
    /// The SDK's REST client for the node at `addr`, authenticated as this user.
    pub fn api(&self, addr: SocketAddr) -> natter_client::Api {
        natter_client::Api::new(format!("http://{addr}"))
            .expect("an http url")
            .with_token(&self.token)
    }

    /// Makes this user a contact of each of `others` through the node at `addr` (see
    /// [`Endpoint::contacts`]): the direct conversations, in the order of `others`.
    pub async fn contacts(&self, addr: SocketAddr, others: &[&TestUser]) -> Vec<ConversationId> {
        let api = self.api(addr);
        let mut convs = Vec::with_capacity(others.len());
        for other in others {
            let direct = within("a direct conversation", api.create_direct(other.id)).await;
            convs.push(direct.expect("a direct conversation").id);
        }
        convs
    }
}

impl Endpoint {
    /// Registers each handle, in order, and logs each in once:
    /// `let [alice, bob] = server.users(["alice", "bob"]).await;`.
    pub async fn users<const N: usize>(&self, handles: [&str; N]) -> [TestUser; N] {
        let mut users = Vec::with_capacity(N);
        for handle in handles {
            users.push(self.user(handle).await);
        }
        users.try_into().unwrap_or_else(|_| unreachable!("one user per handle"))
    }

    /// `alice` and `bob`, and the direct conversation `alice` created with `bob` (its seq 1
    /// is the `created` entry).
    pub async fn direct_pair(&self) -> (TestUser, TestUser, ConversationId) {
        let [alice, bob] = self.users(["alice", "bob"]).await;
        let conv = self.create_direct(&alice, &bob).await;
        (alice, bob, conv)
    }

    /// A group `owner` created with `members` (contacts of the owner), titled "group".
    pub async fn group(&self, owner: &TestUser, members: &[&TestUser]) -> ConversationId {
        self.create_group(owner, "group", members).await
    }

    /// Makes `user` a contact of each of `others`: the direct conversation of each pair
    /// (created by `user`), so that adding them to a group of `user`'s adds them rather than
    /// inviting them. Returns those conversations, in the order of `others`.
    pub async fn contacts(&self, user: &TestUser, others: &[&TestUser]) -> Vec<ConversationId> {
        let mut convs = Vec::with_capacity(others.len());
        for other in others {
            convs.push(self.create_direct(user, other).await);
        }
        convs
    }

    /// A WebSocket of `user` after `ready` and an initial sync from no cursors: live from
    /// here on, with everything before it synced.
    pub async fn synced_ws(&self, user: &TestUser) -> WsClient {
        let mut ws = self.ws(user).await;
        ws.sync(BTreeMap::new()).await;
        ws
    }
}

/// Checks that `seqs` is exactly `from..=to`, in order.
pub fn assert_contiguous(seqs: &[Seq], from: Seq, to: Seq) -> anyhow::Result<()> {
    let want: Vec<Seq> = (from..=to).collect();
    if seqs != want.as_slice() {
        bail!("expected seq {from}..={to} in order, got {seqs:?}");
    }
    Ok(())
}

//! [`RedisBus`]: the [`Bus`] of cluster mode. The directory (which node holds which user's
//! sessions, presence, live nodes) is Redis keys; messages are Redis pub/sub.
//!
//! # Keys (every score is an expiry time in Unix milliseconds)
//! - `natter:nodes`: ZSET of live nodes, refreshed by each node's heartbeat.
//! - `natter:u:{user}`: ZSET of the nodes holding the user's sessions (the registry).
//! - `natter:p:{user}`: ZSET of `{node}|online` / `{node}|away`: the user's status per node.
//! - `natter:seen:{user}`: when the user last went offline.
//! - `natter:nu:{node}`: SET of the users a node has entries for, so that whoever finds
//!   the node dead can remove them at once.
//!
//! A reader ignores members whose score has passed, so a dead node's entries stop counting
//! exactly at their TTL; they are also removed: by every heartbeat touching the same keys,
//! by a whole key's own expiry, and by the sweep of any node that finds the dead one.
//!
//! # Channels
//! One per [`Topic`], named by its `Display`: `natter:n:{node}`, `natter:c:{conversation}`,
//! `natter:all`. Envelopes travel as JSON.
//!
//! One connection publishes and runs commands; a second one, in RESP3 push mode, holds the
//! node's subscriptions and resubscribes by itself after Redis comes back.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use natter_proto::{Status, UserId};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{PushInfo, PushKind, RedisError, RedisResult, Value};

use crate::bus::{
    Bus, BusError, BusReceiver, BusResult, Envelope, Incoming, NodeStatus, SharedPresence, Topic,
    inbox,
};

const NODES_KEY: &str = "natter:nodes";
/// How long a user's last-seen time is kept.
const SEEN_TTL_MS: u64 = 30 * 24 * 3600 * 1000;
/// Commands per pipeline in the heartbeat.
const CHUNK: usize = 512;

fn user_key(user: UserId) -> String {
    format!("natter:u:{}", user.0)
}

fn presence_key(user: UserId) -> String {
    format!("natter:p:{}", user.0)
}

fn seen_key(user: UserId) -> String {
    format!("natter:seen:{}", user.0)
}

fn node_users_key(node: &str) -> String {
    format!("natter:nu:{node}")
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn status_name(status: Status) -> &'static str {
    match status {
        Status::Online => "online",
        Status::Away => "away",
        Status::Offline => "offline",
    }
}

impl From<RedisError> for BusError {
    fn from(err: RedisError) -> BusError {
        metrics::counter!("natter_redis_errors_total").increment(1);
        BusError(err.to_string())
    }
}

impl From<redis::ParsingError> for BusError {
    fn from(err: redis::ParsingError) -> BusError {
        BusError(err.to_string())
    }
}

/// A node's handle on the shared Redis.
#[derive(Clone)]
pub struct RedisBus {
    node: std::sync::Arc<str>,
    cmd: ConnectionManager,
    sub: ConnectionManager,
    ttl_ms: u64,
}

impl RedisBus {
    /// Connects both connections and subscribes to the node's own channel and the
    /// broadcast channel. `max_queued` caps messages waiting in the returned receiver;
    /// beyond it they are dropped and [`BusEvent::Overflow`] is reported.
    pub async fn connect(
        url: &str,
        node: &str,
        ttl: Duration,
        max_queued: usize,
    ) -> RedisResult<(RedisBus, BusReceiver)> {
        let client = redis::Client::open(url)?;
        let retry = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(5)))
            .set_max_delay(Duration::from_secs(1));
        let cmd = ConnectionManager::new_with_config(client, retry.clone()).await?;

        let info = redis::Client::open(url)?.get_connection_info().clone();
        let settings = info.redis_settings().clone().set_protocol(redis::ProtocolVersion::RESP3);
        let info = info.set_redis_settings(settings);
        let sub_client = redis::Client::open(info)?;
        let (inbox, rx) = inbox(max_queued);
        let push = move |info: PushInfo| {
            let item = match info.kind {
                PushKind::Message => match info.data.into_iter().nth(1) {
                    Some(Value::BulkString(bytes)) => Incoming::Encoded(bytes),
                    _ => return Ok(()),
                },
                PushKind::Disconnection => Incoming::Disconnected,
                PushKind::Subscribe => match info.data.first() {
                    Some(Value::BulkString(name)) => {
                        match Topic::parse(&String::from_utf8_lossy(name)) {
                            Some(topic) => Incoming::Subscribed(topic),
                            None => return Ok(()),
                        }
                    }
                    _ => return Ok(()),
                },
                _ => return Ok(()),
            };
            if inbox.push(item) { Ok(()) } else { Err(redis::aio::SendError) }
        };
        // The subscriber keeps retrying (each attempt at most a second apart) for as long
        // as Redis is away; the heartbeat's ping restarts it should it ever give up.
        let sub_config = retry
            .set_number_of_retries(1_000_000)
            .set_push_sender(push)
            .set_automatic_resubscription();
        let mut sub = ConnectionManager::new_with_config(sub_client, sub_config).await?;
        sub.subscribe(Topic::node(node).to_string()).await?;
        sub.subscribe(Topic::Broadcast.to_string()).await?;
        let ttl_ms = ttl.as_millis() as u64;
        Ok((RedisBus { node: node.into(), cmd, sub, ttl_ms }, rx))
    }

    fn member(&self, status: Status) -> String {
        format!("{}|{}", self.node, status_name(status))
    }
}

#[async_trait]
impl Bus for RedisBus {
    fn node(&self) -> &str {
        &self.node
    }

    /// Other nodes may join at any time.
    fn has_peers(&self) -> bool {
        true
    }

    /// `SET natter:once:{key} NX PX ttl`: Redis says who was first.
    async fn claim_once(&self, key: &str, ttl: std::time::Duration) -> BusResult<bool> {
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let set: Option<String> = redis::cmd("SET")
            .arg(format!("natter:once:{key}"))
            .arg(1)
            .arg("NX")
            .arg("PX")
            .arg(ms)
            .query_async(&mut self.cmd.clone())
            .await?;
        Ok(set.is_some())
    }

    /// Adds (`true`) or removes (`false`) this node from users' registry entries, in order.
    async fn update_registry(&self, ops: &[(UserId, bool)]) -> BusResult<()> {
        let now = now_ms();
        let expiry = now + self.ttl_ms;
        let own = node_users_key(&self.node);
        let mut pipe = redis::pipe();
        for (user, add) in ops {
            let key = user_key(*user);
            if *add {
                pipe.zadd(&key, &*self.node, expiry).ignore();
                pipe.pexpire(&key, self.ttl_ms as i64).ignore();
                pipe.sadd(&own, user.0).ignore();
            } else {
                pipe.zrem(&key, &*self.node).ignore();
                pipe.srem(&own, user.0).ignore();
            }
        }
        Ok(pipe.query_async::<()>(&mut self.cmd.clone()).await?)
    }

    /// The live nodes holding each user's sessions, in the order of `users`.
    async fn nodes_of(&self, users: &[UserId]) -> BusResult<Vec<Vec<String>>> {
        if users.is_empty() {
            return Ok(Vec::new());
        }
        let now = now_ms();
        let mut pipe = redis::pipe();
        for user in users {
            pipe.zrangebyscore(user_key(*user), now, "+inf");
        }
        Ok(pipe.query_async(&mut self.cmd.clone()).await?)
    }

    /// Records this node's view of `user`: `Some` status while it holds sessions (or is
    /// in the grace period), `None` when not; `last_seen` when the user went offline here.
    async fn set_presence(
        &self,
        user: UserId,
        status: Option<Status>,
        last_seen: Option<i64>,
    ) -> BusResult<()> {
        let key = presence_key(user);
        let mut pipe = redis::pipe();
        pipe.zrem(&key, &[self.member(Status::Online), self.member(Status::Away)]).ignore();
        if let Some(status) = status {
            pipe.zadd(&key, self.member(status), now_ms() + self.ttl_ms).ignore();
            pipe.pexpire(&key, self.ttl_ms as i64).ignore();
            pipe.sadd(node_users_key(&self.node), user.0).ignore();
        }
        if let Some(at) = last_seen {
            pipe.pset_ex(seen_key(user), at, SEEN_TTL_MS).ignore();
        }
        Ok(pipe.query_async::<()>(&mut self.cmd.clone()).await?)
    }

    /// What Redis holds of each user's presence (live entries only), in the order of `users`.
    async fn presence_of(&self, users: &[UserId]) -> BusResult<Vec<SharedPresence>> {
        if users.is_empty() {
            return Ok(Vec::new());
        }
        let now = now_ms();
        let mut pipe = redis::pipe();
        for user in users {
            pipe.zrangebyscore(presence_key(*user), now, "+inf");
            pipe.get(seen_key(*user));
        }
        let replies: Vec<Value> = pipe.query_async(&mut self.cmd.clone()).await?;
        let mut out = Vec::with_capacity(users.len());
        let mut replies = replies.into_iter();
        while let (Some(members), Some(seen)) = (replies.next(), replies.next()) {
            let members: Vec<String> = redis::from_redis_value(members)?;
            let last_seen: Option<i64> = redis::from_redis_value(seen)?;
            let nodes = members
                .iter()
                .filter_map(|m| {
                    let (node, status) = m.rsplit_once('|')?;
                    let status = match status {
                        "online" => Status::Online,
                        "away" => Status::Away,
                        _ => return None,
                    };
                    Some(NodeStatus { node: node.to_owned(), status })
                })
                .collect();
            out.push(SharedPresence { nodes, last_seen });
        }
        Ok(out)
    }

    /// Refreshes this node's liveness, registry and presence entries (`users`: every user
    /// with sessions here; `statuses`: every user this node reports a status for), removes
    /// lapsed entries on the keys it touches, and sweeps nodes that stopped heart-beating.
    /// Returns the nodes it found dead.
    async fn heartbeat(
        &self,
        users: &[UserId],
        statuses: &[(UserId, Status)],
    ) -> BusResult<Vec<String>> {
        let now = now_ms();
        let expiry = now + self.ttl_ms;
        let ttl = self.ttl_ms as i64;
        let own = node_users_key(&self.node);
        let mut conn = self.cmd.clone();
        redis::pipe()
            .zadd(NODES_KEY, &*self.node, expiry)
            .ignore()
            .query_async::<()>(&mut conn)
            .await?;
        for chunk in users.chunks(CHUNK) {
            let mut pipe = redis::pipe();
            for user in chunk {
                let key = user_key(*user);
                pipe.zadd(&key, &*self.node, expiry).ignore();
                pipe.pexpire(&key, ttl).ignore();
                pipe.zrembyscore(&key, "-inf", now).ignore();
                pipe.sadd(&own, user.0).ignore();
            }
            pipe.query_async::<()>(&mut conn).await?;
        }
        for chunk in statuses.chunks(CHUNK) {
            let mut pipe = redis::pipe();
            for (user, status) in chunk {
                let key = presence_key(*user);
                let other = match status {
                    Status::Away => Status::Online,
                    _ => Status::Away,
                };
                pipe.zrem(&key, self.member(other)).ignore();
                pipe.zadd(&key, self.member(*status), expiry).ignore();
                pipe.pexpire(&key, ttl).ignore();
                pipe.zrembyscore(&key, "-inf", now).ignore();
                pipe.sadd(&own, user.0).ignore();
            }
            pipe.query_async::<()>(&mut conn).await?;
        }
        let dead: Vec<String> = redis::cmd("ZRANGEBYSCORE")
            .arg(NODES_KEY)
            .arg("-inf")
            .arg(now)
            .query_async(&mut conn)
            .await?;
        let dead: Vec<String> = dead.into_iter().filter(|n| **n != *self.node).collect();
        for node in &dead {
            self.sweep(node).await?;
        }
        // Keep the subscriber's reconnect loop alive even if it ever gave up.
        let _: RedisResult<String> = redis::cmd("PING").query_async(&mut self.sub.clone()).await;
        Ok(dead)
    }

    /// Removes every registry and presence entry of `node` (dead, or this node's previous
    /// run under the same id) and forgets the node. Returns whether it left anything.
    async fn sweep(&self, node: &str) -> BusResult<bool> {
        let mut conn = self.cmd.clone();
        let set = node_users_key(node);
        let users: Vec<i64> = redis::cmd("SMEMBERS").arg(&set).query_async(&mut conn).await?;
        let online = format!("{node}|online");
        let away = format!("{node}|away");
        for chunk in users.chunks(CHUNK) {
            let mut pipe = redis::pipe();
            for user in chunk {
                pipe.zrem(user_key(UserId(*user)), node).ignore();
                pipe.zrem(presence_key(UserId(*user)), &[&online, &away]).ignore();
            }
            pipe.query_async::<()>(&mut conn).await?;
        }
        let (_, listed): (i64, i64) =
            redis::pipe().del(&set).zrem(NODES_KEY, node).query_async(&mut conn).await?;
        if !users.is_empty() {
            tracing::info!(node, n_users = users.len(), "swept a dead node's entries");
        }
        Ok(listed > 0 || !users.is_empty())
    }

    async fn publish(&self, messages: Vec<(Topic, Envelope)>) -> BusResult<()> {
        if messages.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for (topic, envelope) in &messages {
            pipe.publish(topic.to_string(), envelope.encode()).ignore();
        }
        Ok(pipe.query_async::<()>(&mut self.cmd.clone()).await?)
    }

    async fn subscribe(&self, topic: Topic) -> BusResult<()> {
        Ok(self.sub.clone().subscribe(topic.to_string()).await?)
    }

    async fn unsubscribe(&self, topic: Topic) -> BusResult<()> {
        Ok(self.sub.clone().unsubscribe(topic.to_string()).await?)
    }
}

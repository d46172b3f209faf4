/**
 * The SDK's API against a real node, one feature after another (crates/client/tests/sdk/
 * features.rs): REST helpers, entries, receipts (delivered reported by itself, read by call),
 * typing, presence, history paging, edit/delete/react round-trips, refused sends reported
 * without blocking the outbox, the caps checked before a send enters it, and a refused token
 * ending the client.
 */
import assert from "node:assert/strict";
import { after, afterEach, before, test } from "node:test";
import { inspect } from "node:util";
import { Api } from "../src/api.js";
import { NatterError } from "../src/errors.js";
import { TestServer } from "../testkit/server.js";
import { account, assertContiguous, connect, PASSWORD, Recorder, closeClients } from "../testkit/util.js";

afterEach(closeClients);

let server: TestServer;
before(async () => {
  server = await TestServer.start();
});
after(async () => {
  await server.stop();
});

test("receipts, typing, presence, history paging, edit/delete/react", async () => {
  const api = new Api(server.url);
  const aliceUser = await api.register("alice", PASSWORD);
  await assert.rejects(api.register("alice", PASSWORD), (e: unknown) => e instanceof NatterError && e.code === "conflict");
  const session = await api.login("alice", PASSWORD, "laptop");
  assert.equal(session.user_id, aliceUser.user_id);
  const bob = await account(server.url, "bob");
  const aliceApi = api.withToken(session.token);
  assert.equal((await aliceApi.me()).handle, "alice");
  assert.equal((await aliceApi.user("bob")).user_id, bob.id);
  assert.deepEqual((await aliceApi.users([bob.id, aliceUser.user_id])).map((u) => u.handle), ["bob", "alice"]);
  const conv = (await aliceApi.createDirect(bob.id)).id;
  assert.equal((await aliceApi.conversation(conv)).kind, "direct");
  assert.equal((await aliceApi.conversations({ limit: 10 })).conversations[0]?.id, conv);
  assert.deepEqual((await aliceApi.members(conv)).map((m) => m.handle).sort(), ["alice", "bob"]);

  const alice = await connect(server.url, session.token);
  const bobClient = await connect(server.url, bob.token);
  const a = new Recorder(alice);
  const b = new Recorder(bobClient);
  assert.equal(await a.connected(), "ws");
  await b.connected();
  assert.ok(!inspect(alice, { depth: 5 }).includes(session.token), "the token never shows in an inspected client");
  assert.ok(!JSON.stringify(aliceApi).includes(session.token));
  assert.ok(a.seen.some((e) => e.type === "conversation" && e.conversation.id === conv), "sync reports the summary");

  // An entry; bob's delivered cursor comes back without bob doing anything; read by call.
  const ack = await alice.send(conv, "hi bob");
  const entry = await b.entry(conv, ack.seq);
  assert.equal(entry.kind === "message" && entry.body, "hi bob");
  assert.equal(entry.client_msg_id, ack.client_msg_id);
  await a.waitFor("bob's delivered receipt", (e) => e.type === "receipt" && e.receipt.user === bob.id && e.receipt.delivered_seq === ack.seq);
  await bobClient.read(conv, ack.seq);
  await a.waitFor("bob's read receipt", (e) => e.type === "receipt" && e.receipt.user === bob.id && e.receipt.read_seq === ack.seq);

  // Typing reaches the other member, with a ttl.
  await bobClient.typing(conv, true);
  const ttl = await a.waitFor("bob typing", (e) => (e.type === "typing" && e.user === bob.id && e.typing ? e.ttl_ms ?? 0 : undefined));
  assert.ok(ttl > 0);

  // Presence: asked for, then changes as they happen.
  const watched = await alice.subscribePresence([bob.id, 99_999]);
  assert.deepEqual(watched.denied, [99_999]);
  assert.deepEqual(watched.users.map((p) => [p.user, p.status]), [[bob.id, "online"]]);
  await bobClient.setStatus("away");
  await a.waitFor("bob away", (e) => e.type === "presence" && e.users.some((p) => p.user === bob.id && p.status === "away"));

  // History pages.
  for (let k = 0; k < 4; k++) await alice.send(conv, `more ${k}`);
  let page = await alice.history(conv, { before: 6 }, 2);
  assert.deepEqual([page.entries.map((e) => e.seq), page.has_more], [[4, 5], true]);
  page = await alice.history(conv, { after: 5 });
  assert.deepEqual([page.entries.map((e) => e.seq), page.has_more], [[6], false]);
  page = await alice.history(conv, {}, 3);
  assert.deepEqual(page.entries.map((e) => e.seq), [4, 5, 6]);

  // Edit, react, delete: each an entry of its own, live; the store's view folds them in.
  const edited = await alice.edit(conv, ack.seq, "hi bob!");
  const reacted = await bobClient.react(conv, 3, "👍");
  const deleted = await alice.delete(conv, 4);
  const e1 = await b.entry(conv, edited.seq);
  assert.deepEqual(e1.kind === "edit" && [e1.target, e1.body], [ack.seq, "hi bob!"]);
  const e2 = await a.entry(conv, reacted.seq);
  assert.deepEqual(e2.kind === "reaction" && [e2.target, e2.emoji, e2.sender], [3, "👍", bob.id]);
  const e3 = await b.entry(conv, deleted.seq);
  assert.equal(e3.kind === "delete" && e3.target, 4);
  page = await alice.history(conv, { after: 1 }, 3);
  const [m2, m3, m4] = page.entries;
  assert.equal(m2?.state?.body, "hi bob!");
  assert.equal(m2?.state?.edited_seq, edited.seq);
  assert.deepEqual(m3?.state?.reactions, [{ emoji: "👍", users: [bob.id] }]);
  assert.equal(m3?.state?.body, "more 0", "the SDK fills in the text of an unedited message");
  assert.equal(m4?.state?.deleted, true);
  assert.equal(m4?.kind === "message" && m4.body, "", "a deleted message is redacted");

  // Bob leaves: he turns offline for alice, who watches him.
  await bobClient.close();
  await a.waitFor("bob offline", (e) => e.type === "presence" && e.users.some((p) => p.user === bob.id && p.status === "offline"));
  assertContiguous(a.entries(conv));
  assertContiguous(b.entries(conv));
  assert.deepEqual(a.entries(conv).map((e) => e.seq), [...Array(deleted.seq).keys()].map((i) => i + 1));

  await alice.close();
  const closed = await a.waitFor("closed", (e) => (e.type === "connection" && e.state === "closed" ? e.reason : undefined));
  assert.equal(closed, "client");
  await assert.rejects(alice.send(conv, "late"), (e: unknown) => e instanceof NatterError && e.kind === "closed");
});

test("refused sends fail alone; caps are checked before the outbox; a refused token closes the client", async () => {
  const alice = await account(server.url, "carol");
  const dave = await account(server.url, "dave");
  const erin = await account(server.url, "erin");
  const theirs = (await dave.api.createDirect(erin.id)).id;
  const ours = (await dave.api.createDirect(alice.id)).id;

  const client = await connect(server.url, alice.token, { maxOutbox: 3 });
  const rec = new Recorder(client);
  await rec.connected();

  // A send to a conversation carol is not in is refused for good; the next one still goes.
  const refused = client.send(theirs, "intruding");
  const next = await client.sendNowait(ours, "fine");
  await assert.rejects(refused, (e: unknown) => e instanceof NatterError && e.code === "not_found");
  const failed = await rec.waitFor("send failed", (e) => (e.type === "send_failed" ? e : undefined));
  assert.deepEqual([failed.conversation, failed.error.code], [theirs, "not_found"]);
  await rec.waitFor("the next send's ack", (e) => e.type === "acked" && e.ack.client_msg_id === next);

  // A send the server would close the connection over never enters the outbox.
  await assert.rejects(client.send(ours, "x".repeat(70 * 1024)), (e: unknown) => e instanceof NatterError && e.kind === "too_large");
  // The outbox is bounded.
  const sends = [1, 2, 3, 4].map((k) => client.sendNowait(ours, `burst ${k}`));
  const results = await Promise.allSettled(sends);
  assert.ok(results.some((r) => r.status === "rejected" && (r.reason as NatterError).kind === "outbox_full"), "the fourth is refused");
  await client.close();

  // A revoked token: the client stops for good instead of retrying forever.
  await alice.api.logout();
  const revoked = await connect(server.url, alice.token);
  const r2 = new Recorder(revoked);
  const reason = await r2.waitFor("closed", (e) => (e.type === "connection" && e.state === "closed" ? e.reason : undefined));
  assert.equal(reason, "unauthenticated");
  await assert.rejects(revoked.send(ours, "x"), (e: unknown) => e instanceof NatterError && e.kind === "closed");
});

test("invitations: listed, accepted, declined; the group's entries follow", async () => {
  const owner = await account(server.url, "frank");
  const sam = await account(server.url, "sam");
  const client = await connect(server.url, sam.token);
  const rec = new Recorder(client);
  await rec.connected();
  const created = await owner.api.createGroup("one", [sam.id]);
  assert.deepEqual(created.invited, [sam.id]);
  const inv = await rec.waitFor("the invitation", (e) => (e.type === "invitation" ? e.invitation : undefined));
  assert.deepEqual([inv.conversation, inv.inviter_handle, inv.role], [created.id, "frank", "member"]);
  const two = await owner.api.createGroup("two", []);
  const added = await owner.api.addMember(two.id, sam.id);
  assert.equal(added.added, false);
  assert.deepEqual((await sam.api.invitations()).map((i) => i.conversation), [created.id, two.id]);
  await sam.api.declineInvitation(two.id);
  const joined = await sam.api.acceptInvitation(created.id);
  assert.equal(joined.seq, 2);
  const e = await rec.entry(created.id, 2);
  assert.deepEqual(e.kind === "member_added" && [e.user, e.role], [sam.id, "member"]);
  assert.deepEqual(rec.entries(created.id).map((x) => x.seq), [1, 2]);
  await client.close();
});

test("the events() iterator: a reader that lags past maxBufferedEvents loses and repeats nothing", async () => {
  const alice = await account(server.url, "gina");
  const bob = await account(server.url, "hank");
  const conv = (await bob.api.createDirect(alice.id)).id;
  const client = await connect(server.url, alice.token, { maxBufferedEvents: 8, transports: ["ws"] });
  const rec = new Recorder(client);
  const events = client.events();
  await rec.connected();
  for (let k = 0; k < 40; k++) await bob.api.postEntry(conv, `b${k}`, { kind: "message", body: `bob ${k}` });
  await rec.waitFor("the drop for the full buffer", (e) => e.type === "connection" && e.state === "reconnecting" && e.reason.includes("event buffer"));
  const seqs: number[] = [];
  for await (const e of events) {
    if (e.type === "entry" && e.entry.conversation === conv) seqs.push(e.entry.seq);
    if (seqs[seqs.length - 1] === 41) break;
  }
  assert.deepEqual(seqs, Array.from({ length: 41 }, (_, i) => i + 1), "every entry once, in order, through the iterator");
  await client.close();
});

test("profiles: set, searched among contacts, and pushed live to a contact as a `profile` event", async () => {
  const alice = await account(server.url, "pr_alice");
  const bob = await account(server.url, "pr_bob");
  await alice.api.createDirect(bob.id);
  const b = await connect(server.url, bob.token);
  const br = new Recorder(b);
  await br.connected();
  const now = await alice.api.setProfile({ display_name: "Alice Liddell", status_text: "curious" });
  assert.deepEqual(now, { user_id: alice.id, handle: "pr_alice", display_name: "Alice Liddell", status_text: "curious" });
  const pushed = await br.waitFor("a profile event", (e) => (e.type === "profile" ? e.user : undefined));
  assert.deepEqual(pushed, now);
  assert.deepEqual((await bob.api.searchUsers("alice l")).map((u) => u.handle), ["pr_alice"]);
  assert.deepEqual((await bob.api.users([alice.id]))[0], now);
  const cleared = await alice.api.setProfile({ status_text: "" });
  assert.equal(cleared.status_text, undefined);
  assert.equal(cleared.display_name, "Alice Liddell");
});

test("account: devices listed, a password change logs the other devices out (their client closes)", async () => {
  const alice = await account(server.url, "acct_alice");
  const other = await new Api(server.url).login("acct_alice", PASSWORD, "tablet");
  const tablet = await connect(server.url, other.token);
  const tr = new Recorder(tablet);
  await tr.connected();
  const listed = await alice.api.devices();
  assert.equal(listed.devices.length, 2);
  assert.ok(listed.devices.some((d) => d.device_id === other.device_id && d.name === "tablet"));
  await alice.api.changePassword(PASSWORD, "a brand new passphrase");
  await tr.waitFor("the tablet's client closed", (e) => e.type === "connection" && e.state === "closed" && e.reason === "unauthenticated");
  assert.equal((await alice.api.devices()).devices.length, 1);
  await assert.rejects(new Api(server.url).login("acct_alice", PASSWORD), /unauthenticated|401/);
});

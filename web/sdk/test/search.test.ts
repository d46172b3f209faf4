/**
 * Message search through the SDK (issue 15; crates/client/tests/sdk/push.rs,
 * `search_through_the_sdk_pages_and_filters`): messages sent live are found at once, newest
 * first, each with a snippet whose `hit` parts are what matched; the conversation, sender and
 * attachment filters narrow it; cursor pages give every hit once; a user in none of the
 * conversations finds nothing, even naming one; bad input is `bad_request`.
 */
import assert from "node:assert/strict";
import { after, afterEach, before, test } from "node:test";
import type { Api } from "../src/api.js";
import type { Client } from "../src/client.js";
import { NatterError } from "../src/errors.js";
import type { ConversationId, SearchHit, SearchOptions, UserId } from "../src/types.js";
import { TestServer } from "../testkit/server.js";
import { account, closeClients, connect } from "../testkit/util.js";

afterEach(closeClients);

let server: TestServer;
before(async () => {
  server = await TestServer.start();
});
after(async () => {
  await server.stop();
});

interface Sent {
  conversation: ConversationId;
  seq: number;
  sender: UserId;
  ts: number;
  text: string;
}

/** Where a hit is and what its snippet reads, with its marked parts. */
function shape(h: SearchHit): { at: string; text: string; marked: string[] } {
  return { at: `${h.conversation}:${h.seq}`, text: h.snippet.map((p) => p.text).join(""), marked: h.snippet.filter((p) => p.hit).map((p) => p.text) };
}

/** Every page of a search, `limit` hits at a time. */
async function allPages(api: Api, q: string, options: SearchOptions, limit: number): Promise<{ hits: SearchHit[]; pages: number }> {
  const hits: SearchHit[] = [];
  let cursor: string | undefined;
  for (let pages = 1; ; pages++) {
    const page = await api.search(q, cursor === undefined ? { ...options, limit } : { ...options, limit, cursor });
    assert.ok(page.hits.length <= limit, `a page holds at most ${limit}`);
    hits.push(...page.hits);
    if (page.next === undefined) return { hits, pages };
    cursor = page.next;
  }
}

test("search finds what was sent with marked snippets; filters narrow; cursor pages give every hit once; a non-member finds nothing", async () => {
  const alice = await account(server.url, "alice");
  const bob = await account(server.url, "bob");
  const carol = await account(server.url, "carol");
  const direct = (await alice.api.createDirect(bob.id)).id;
  const group = (await alice.api.createGroup("launch crew", [bob.id])).id;
  const clients = new Map<UserId, Client>([
    [alice.id, await connect(server.url, alice.token)],
    [bob.id, await connect(server.url, bob.token)],
  ]);
  const specs = await bob.api.upload(new TextEncoder().encode("stage one, stage two\n"), { contentType: "text/plain", name: "specs.txt" });

  const sent: Sent[] = [];
  const say = async (sender: UserId, conversation: ConversationId, body: string, attachments?: string[]): Promise<void> => {
    const ack = await clients.get(sender)!.send(conversation, body, attachments ? { attachments } : {});
    // A snippet reads the text as it is searched: the body, then the attachments' names.
    const text = attachments ? `${body}\n${specs.name}` : body;
    sent.push({ conversation, seq: ack.seq, sender, ts: ack.ts, text });
  };
  await say(alice.id, direct, "the rocket plan is ready");
  await say(bob.id, direct, "Rocket fuel is ordered");
  await say(alice.id, group, "nothing to see here");
  await say(alice.id, group, "launch the rocket on Friday, weather permitting");
  await say(bob.id, group, "the rocket specs, attached", [specs.id]);
  await say(bob.id, direct, "three rockets would be better");
  const rocket = sent.filter((s) => /\brocket\b/i.test(s.text));
  // Newest first: by time, then conversation, then seq (ties in one millisecond are possible).
  const newest = (list: Sent[]): Sent[] => [...list].sort((a, b) => b.ts - a.ts || b.conversation - a.conversation || b.seq - a.seq);

  // Found at once, newest first, each with where it is, who sent it when, and its hits marked
  // in the original case.
  const found = await bob.api.search("rocket");
  assert.equal(found.next, undefined, "one page");
  assert.deepEqual(
    found.hits.map((h) => [h.conversation, h.seq, h.sender, h.ts]),
    newest(rocket).map((s) => [s.conversation, s.seq, s.sender, s.ts]),
  );
  for (const h of found.hits) {
    const s = sent.find((x) => x.conversation === h.conversation && x.seq === h.seq)!;
    assert.deepEqual(shape(h), { at: `${s.conversation}:${s.seq}`, text: s.text, marked: [/Rocket/.test(s.text) ? "Rocket" : "rocket"] });
    assert.ok(h.snippet.every((p) => p.hit === undefined || p.hit === true), "`hit` is absent when false");
  }
  // A prefix finds "rockets" too; a phrase is marked as one run.
  assert.equal((await bob.api.search("rocket*")).hits.length, rocket.length + 1);
  const phrase = await alice.api.search('"rocket on friday"');
  assert.deepEqual(phrase.hits.map(shape), [{ at: `${group}:${sent[3]!.seq}`, text: sent[3]!.text, marked: ["rocket on Friday"] }]);

  // Filters: one conversation, one sender, only messages with attachments.
  const inGroup = await bob.api.search("rocket", { conversation: group });
  assert.deepEqual(inGroup.hits.map((h) => h.seq), newest(rocket.filter((s) => s.conversation === group)).map((s) => s.seq));
  const byBob = await alice.api.search("rocket*", { sender: bob.id, order: "newest" });
  assert.deepEqual(byBob.hits.map((h) => `${h.conversation}:${h.seq}`), newest(sent.filter((s) => s.sender === bob.id && /rocket/i.test(s.text))).map((s) => `${s.conversation}:${s.seq}`));
  const withFiles = await alice.api.search("rocket", { hasAttachment: true });
  assert.deepEqual(withFiles.hits.map((h) => h.seq), [sent[4]!.seq]);

  // Pages of two: every hit once, in the order of one big page, the last without `next`.
  const paged = await allPages(bob.api, "rocket*", {}, 2);
  const whole = await bob.api.search("rocket*", { limit: 50 });
  assert.equal(paged.pages, Math.ceil(whole.hits.length / 2));
  assert.deepEqual(paged.hits.map(shape), whole.hits.map(shape));
  assert.equal(new Set(paged.hits.map((h) => `${h.conversation}:${h.seq}`)).size, paged.hits.length, "no hit twice");
  // By relevance: the same hits, in another order perhaps.
  const relevant = await allPages(bob.api, "rocket*", { order: "relevance" }, 2);
  assert.deepEqual(relevant.hits.map((h) => `${h.conversation}:${h.seq}`).sort(), whole.hits.map((h) => `${h.conversation}:${h.seq}`).sort());

  // Carol is in neither conversation: nothing, even when she names one.
  assert.deepEqual((await carol.api.search("rocket")).hits, []);
  assert.deepEqual((await carol.api.search("rocket*", { conversation: group })).hits, []);

  // Bad input is refused as such.
  const badRequest = (e: unknown): boolean => e instanceof NatterError && e.code === "bad_request" && e.status === 400;
  await assert.rejects(bob.api.search("  "), badRequest);
  await assert.rejects(bob.api.search("rocket", { limit: 51 }), badRequest);
  await assert.rejects(bob.api.search("x".repeat(257)), badRequest);
  // An aborted search says so.
  const gone = new AbortController();
  gone.abort();
  await assert.rejects(bob.api.search("rocket", {}, gone.signal), (e: unknown) => e instanceof NatterError && e.kind === "aborted");
});

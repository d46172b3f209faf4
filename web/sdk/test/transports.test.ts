/**
 * The fallback transports. Each alone (the client restricted to it) passes a basic round:
 * send, receive, receipts, typing, presence, history. Then one client moves WebSocket → SSE →
 * long-poll while another user sends steadily: an HTTP proxy first refuses WebSocket upgrades
 * (and cuts the open socket), then refuses `GET /v1/events` (and ends the stream); the client
 * lands on long-poll, and when both are allowed again it goes back to the WebSocket by itself.
 * Every entry arrives exactly once, in order, on every transport and across every switch.
 */
import assert from "node:assert/strict";
import { once } from "node:events";
import { afterEach, test } from "node:test";
import WebSocket from "ws";
import type { Client } from "../src/client.js";
import type { TransportName } from "../src/transport/conn.js";
import { HttpProxy } from "../testkit/proxies.js";
import { TestServer } from "../testkit/server.js";
import { wsUrl } from "../src/transport/ws.js";
import { account, assertContiguous, connect, Recorder, textsFrom, wholeLog, closeClients } from "../testkit/util.js";

afterEach(closeClients);

test("ws with compress: permessage-deflate is agreed only when asked, and a round works", async () => {
  const server = await TestServer.start();
  try {
    const alice = await account(server.url, "alice");
    const bob = await account(server.url, "bob");
    const conv = (await alice.api.createDirect(bob.id)).id;
    // The \`ws\` library offers the extension on every connection; the server (its default
    // \`ws_compression = "requested"\`) agrees only when the URL asks.
    for (const [compress, agreed] of [[false, ""], [true, "permessage-deflate"]] as const) {
      const sock = new WebSocket(wsUrl(server.url, compress), { headers: { authorization: `Bearer ${alice.token}` } });
      await once(sock, "open");
      assert.equal(Object.keys(sock.extensions ? parseExtensions(sock.extensions) : {}).join(), agreed);
      sock.close();
      await once(sock, "close");
    }
    const a = await connect(server.url, alice.token, { compress: true });
    const b = await connect(server.url, bob.token);
    const ar = new Recorder(a);
    const br = new Recorder(b);
    assert.equal(await ar.connected(), "ws");
    await br.connected();
    const long = "compressed both ways: ".repeat(20);
    const mine = await a.send(conv, long);
    await br.entry(conv, mine.seq);
    const theirs = await b.send(conv, `${long} (back)`);
    await ar.entry(conv, theirs.seq);
    assert.deepEqual(textsFrom(ar.entries(conv), bob.id), [`${long} (back)`]);
    assert.deepEqual(textsFrom(br.entries(conv), alice.id), [long]);
  } finally {
    await server.stop();
  }
});

/** The extension names of a \`Sec-WebSocket-Extensions\` value. */
function parseExtensions(value: string): Record<string, true> {
  return Object.fromEntries(value.split(",").map((e) => [(e.split(";")[0] ?? "").trim(), true]).filter(([n]) => n !== ""));
}

for (const transport of ["ws", "sse", "poll"] as TransportName[]) {
  test(`${transport} alone: send, receive, receipts, typing, presence, history`, async () => {
    const server = await TestServer.start();
    try {
      const alice = await account(server.url, "alice");
      const bob = await account(server.url, "bob");
      const conv = (await alice.api.createDirect(bob.id)).id;
      const a = await connect(server.url, alice.token, { transports: [transport] });
      const b = await connect(server.url, bob.token);
      const ar = new Recorder(a);
      const br = new Recorder(b);
      assert.equal(await ar.connected(), transport);
      await br.connected();

      const mine = await a.send(conv, `from alice over ${transport}`);
      await br.entry(conv, mine.seq);
      await ar.entry(conv, mine.seq);
      const theirs = await b.send(conv, "from bob");
      await ar.entry(conv, theirs.seq);
      // Alice's delivered cursor reaches bob by itself; her read by call; and bob's to her.
      await br.waitFor("alice's delivered receipt", (e) => e.type === "receipt" && e.receipt.user === alice.id && e.receipt.delivered_seq >= theirs.seq);
      await a.read(conv, theirs.seq);
      await br.waitFor("alice's read receipt", (e) => e.type === "receipt" && e.receipt.user === alice.id && e.receipt.read_seq === theirs.seq);
      await b.read(conv, mine.seq);
      await ar.waitFor("bob's read receipt", (e) => e.type === "receipt" && e.receipt.user === bob.id && e.receipt.read_seq === mine.seq);
      // Typing both ways.
      await b.typing(conv, true);
      await ar.waitFor("bob typing", (e) => e.type === "typing" && e.user === bob.id && e.typing);
      await a.typing(conv, true);
      await br.waitFor("alice typing", (e) => e.type === "typing" && e.user === alice.id && e.typing);
      // Presence on the transport's own session.
      const watched = await a.subscribePresence([bob.id]);
      assert.deepEqual(watched.users.map((p) => p.status), ["online"]);
      await b.setStatus("away");
      await ar.waitFor("bob away", (e) => e.type === "presence" && e.users.some((p) => p.user === bob.id && p.status === "away"));
      await a.setStatus("away");
      const bw = await b.subscribePresence([alice.id]);
      assert.deepEqual(bw.users.map((p) => p.status), ["away"]);
      // History.
      const page = await a.history(conv, { before: theirs.seq }, 10);
      assert.deepEqual(page.entries.map((e) => e.seq), [1, mine.seq]);
      assert.deepEqual(ar.entries(conv).map((e) => e.seq), [1, 2, 3]);
      await a.close();
      await b.close();
    } finally {
      await server.stop();
    }
  });
}

test("WebSocket → SSE → long-poll under traffic, then back to the WebSocket: every entry once, in order", async () => {
  const server = await TestServer.start();
  const proxy = await HttpProxy.start(server.url);
  let sending = true;
  let a: Client | undefined;
  let b: Client | undefined;
  try {
    const alice = await account(server.url, "alice");
    const bob = await account(server.url, "bob");
    const conv = (await alice.api.createDirect(bob.id)).id;
    a = await connect(proxy.url, alice.token, { fallbackAfter: 2, preferredRetryMs: 400 });
    const ar = new Recorder(a);
    b = await connect(server.url, bob.token);
    const br = new Recorder(b);
    assert.equal(await ar.connected(), "ws");
    await br.connected();

    // Bob sends steadily (each send waits for its ack) until told to stop.
    const bobClient = b;
    let nBob = 0;
    const bobLoop = (async () => {
      while (sending) await bobClient.send(conv, `bob ${nBob++}`);
    })();
    const mine: string[] = [];
    const aliceSends = async (tag: string): Promise<void> => {
      for (let k = 0; k < 5; k++) mine.push(await (a as Client).sendNowait(conv, `alice ${tag} ${k}`));
    };
    const bobAt = (n: number) => ar.waitFor(`bob's message ${n}`, (e) => e.type === "entry" && e.entry.kind === "message" && e.entry.body === `bob ${n}`);

    await aliceSends("ws");
    await bobAt(5);

    proxy.blockWs = true;
    proxy.end("ws");
    assert.equal(await ar.connected(), "sse");
    const onSse = nBob;
    await aliceSends("sse");
    await bobAt(onSse + 5);

    proxy.blockSse = true;
    proxy.end("sse");
    assert.equal(await ar.connected(), "poll");
    const onPoll = nBob;
    await aliceSends("poll");
    await bobAt(onPoll + 5);

    proxy.blockWs = false;
    proxy.blockSse = false;
    assert.equal(await ar.connected(), "ws", "back on the preferred transport");
    const back = nBob;
    await aliceSends("ws again");
    await bobAt(back + 5);

    sending = false;
    await bobLoop;
    await bobAt(nBob - 1);
    await ar.acks(mine);
    assert.deepEqual(ar.ackedIds(), mine, "alice's acks, once each, in the order written");
    const entries = ar.entries(conv);
    assertContiguous(entries);
    assert.deepEqual(textsFrom(entries, bob.id), Array.from({ length: nBob }, (_, k) => `bob ${k}`));
    const log = await wholeLog(alice.api, conv);
    const aliceTexts = ["ws", "sse", "poll", "ws again"].flatMap((tag) => [0, 1, 2, 3, 4].map((k) => `alice ${tag} ${k}`));
    assert.deepEqual(textsFrom(log, alice.id), aliceTexts, "stored once each, in order");
    const last = log[log.length - 1]?.seq ?? 0;
    if ((entries[entries.length - 1]?.seq ?? 0) < last) await ar.entry(conv, last);
    assertContiguous(ar.entries(conv));
    assert.deepEqual(ar.entries(conv).map((e) => e.seq), log.map((e) => e.seq), "alice has the whole log, once");
    const used = new Set(ar.seen.flatMap((e) => (e.type === "connection" && e.state === "connected" ? [e.transport] : [])));
    assert.deepEqual([...used].sort(), ["poll", "sse", "ws"]);
    assert.ok(proxy.counts.refused >= 4, `the proxy refused ${proxy.counts.refused} connections`);
  } finally {
    sending = false;
    await a?.close();
    await b?.close();
    await proxy.stop();
    await server.stop();
  }
});

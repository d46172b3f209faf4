/**
 * The SDK against a node that goes away (crates/client/tests/sdk/reconnect.rs): order with no
 * gap or duplicate as the app sees it, resume from the SDK's cursors, and the outbox retried
 * with the same client_msg_id, so every send is stored exactly once, in the order written,
 * with exactly one ack each, reported in that order.
 */
import assert from "node:assert/strict";
import { afterEach, test } from "node:test";
import { TcpProxy } from "../testkit/proxies.js";
import { TestServer } from "../testkit/server.js";
import { account, assertContiguous, body, connect, Recorder, textsFrom, wholeLog, closeClients } from "../testkit/util.js";

afterEach(closeClients);

test("a server restart with sends queued while it is down: stored once, in order, acked in order", async () => {
  const server = await TestServer.start();
  try {
    const alice = await account(server.url, "alice");
    const bob = await account(server.url, "bob");
    const conv = (await alice.api.createDirect(bob.id)).id;
    const a = await connect(server.url, alice.token);
    const b = await connect(server.url, bob.token);
    const ar = new Recorder(a);
    const br = new Recorder(b);
    await ar.connected();
    await br.connected();

    for (let k = 0; k < 5; k++) {
      const ack = await a.send(conv, `before ${k}`);
      assert.equal(ack.seq, 2 + k, "seq 1 is the conversation's creation");
    }
    await br.entry(conv, 6);

    await server.kill();
    await ar.waitFor("the drop", (e) => e.type === "connection" && e.state === "reconnecting");
    const queued: string[] = [];
    for (let k = 0; k < 5; k++) queued.push(await a.sendNowait(conv, `during ${k}`));
    assert.deepEqual((await a.outbox()).map((i) => i.client_msg_id), queued, "the outbox is readable, in order");
    await server.restart();

    const acks = await ar.acks(queued);
    assert.deepEqual(acks.map((x) => x.seq), [7, 8, 9, 10, 11], "delivered in the order written");
    const transports = ar.seen.flatMap((e) => (e.type === "connection" && e.state === "connected" ? [e.transport] : []));
    assert.deepEqual(transports, ["ws", "ws"], "a server that is down is no reason to leave the WebSocket");
    assert.deepEqual(ar.ackedIds().slice(-5), queued, "acks reported in send order");
    await br.entry(conv, 11);
    const want = [0, 1, 2, 3, 4].map((k) => `before ${k}`).concat([0, 1, 2, 3, 4].map((k) => `during ${k}`));
    assert.deepEqual(textsFrom(br.entries(conv), alice.id), want, "bob sees every message once, in order");
    assertContiguous(br.entries(conv));
    if (!ar.entries(conv).some((e) => e.seq === 11)) await ar.entry(conv, 11);
    assertContiguous(ar.entries(conv));
    assert.deepEqual([ar.entries(conv)[0]?.seq, ar.entries(conv).length], [1, 11]);
    assert.deepEqual((await wholeLog(alice.api, conv)).flatMap((e) => body(e) ?? []), want, "the log holds each once");
    assert.equal((await a.outbox()).length, 0);
    await a.close();
    await b.close();
  } finally {
    await server.stop();
  }
});

test("connections cut again and again mid-batch: nothing lost, nothing repeated", async () => {
  const BATCHES = 5;
  const PER_BATCH = 60;
  const N = BATCHES * PER_BATCH;
  const server = await TestServer.start();
  const proxy = await TcpProxy.start(server.addr);
  try {
    const alice = await account(server.url, "alice");
    const bob = await account(server.url, "bob");
    const conv = (await alice.api.createDirect(bob.id)).id;
    // Both clients go through the proxy, so each cut drops both of them.
    // A window of 8 sends in flight: each cut lands with most of its batch still unacked.
    const a = await connect(proxy.url, alice.token, { maxInFlight: 8 });
    const b = await connect(proxy.url, bob.token);
    const ar = new Recorder(a);
    const br = new Recorder(b);
    await ar.connected();
    await br.connected();

    // Bob reads in the background until he has every message; he sends too, now and then.
    let fromAlice = 0;
    const bobDone = br.waitFor("every message at bob", (e) => {
      if (e.type === "entry" && e.entry.sender === alice.id) fromAlice += 1;
      return fromAlice >= N ? true : undefined;
    }, 45_000);
    const bobIds: string[] = [];

    // Each batch is queued at once; at its first ack (the rest in flight or queued) every
    // connection is cut, and the next batch is queued once alice has seen the drop.
    const ids: string[] = [];
    const ackedBeforeCut: number[] = [];
    for (let batch = 0; batch < BATCHES; batch++) {
      const batchIds = new Set<string>();
      for (let k = 0; k < PER_BATCH; k++) {
        const id = await a.sendNowait(conv, `m${batch * PER_BATCH + k}`);
        batchIds.add(id);
        ids.push(id);
      }
      bobIds.push(await b.sendNowait(conv, `bob ${batch}`));
      await ar.waitFor("an ack of the batch", (e) => e.type === "acked" && batchIds.has(e.ack.client_msg_id ?? ""));
      proxy.cut();
      ackedBeforeCut.push(ar.ackedIds().filter((id) => batchIds.has(id)).length);
      await ar.waitFor("the cut", (e) => e.type === "connection" && e.state === "reconnecting");
    }
    const acks = await ar.acks(ids);
    await bobDone;
    await br.acks(bobIds);

    // Exactly one ack per send, reported in the written order, with increasing seqs.
    assert.deepEqual(ar.ackedIds(), ids, "one ack event per send, in order");
    assert.ok(acks.every((x, i) => i === 0 || (acks[i - 1]?.seq ?? 0) < x.seq), "seqs in the written order");
    assert.ok(ackedBeforeCut.every((n) => n < PER_BATCH), `every cut came mid-batch: ${ackedBeforeCut}`);
    const drops = ar.seen.filter((e) => e.type === "connection" && e.state === "reconnecting").length;
    assert.ok(drops >= BATCHES, `alice was cut ${drops} times`);

    const want = Array.from({ length: N }, (_, k) => `m${k}`);
    assert.deepEqual(textsFrom(br.entries(conv), alice.id), want);
    assertContiguous(br.entries(conv));
    if (!ar.entries(conv).some((e) => e.seq === (acks[acks.length - 1]?.seq ?? 0))) {
      await ar.entry(conv, acks[acks.length - 1]?.seq ?? 0);
    }
    assertContiguous(ar.entries(conv));
    const log = await wholeLog(alice.api, conv);
    assert.deepEqual(textsFrom(log, alice.id), want, "the log holds every message exactly once, in order");
    assert.deepEqual(textsFrom(log, bob.id), [0, 1, 2, 3, 4].map((k) => `bob ${k}`));
    await a.close();
    await b.close();
  } finally {
    await proxy.stop();
    await server.stop();
  }
});

/**
 * A "reload" (crates/client/tests/sdk/resume.rs): the store outlives the client instance. The
 * next instance on the same store resumes from the saved cursors (it gets exactly what it
 * missed) and delivers the outbox the previous one left (sends written while the server was
 * unreachable) exactly once, in order, with their acks reported to it.
 */
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, test } from "node:test";
import { MemoryStore, type StateStore } from "../src/store.js";
import { FileStore } from "../testkit/filestore.js";
import { TcpProxy } from "../testkit/proxies.js";
import { TestServer } from "../testkit/server.js";
import { account, assertContiguous, connect, Recorder, textsFrom, closeClients } from "../testkit/util.js";

afterEach(closeClients);

const stores: Array<[string, (dir: string) => StateStore]> = [
  ["memory", () => new MemoryStore()],
  ["file", (dir) => new FileStore(join(dir, "alice.json"))],
];

for (const [kind, makeStore] of stores) {
  test(`a new client on the same ${kind} store resumes its cursors and delivers the outbox once`, async () => {
    const dir = mkdtempSync(join(tmpdir(), "natter-sdk-store-"));
    const server = await TestServer.start();
    const proxy = await TcpProxy.start(undefined); // refuses everything: the server looks down
    try {
      const alice = await account(server.url, "alice");
      const bob = await account(server.url, "bob");
      const conv = (await bob.api.createDirect(alice.id)).id;
      const store = makeStore(dir);
      const b = await connect(server.url, bob.token);
      const br = new Recorder(b);
      await br.connected();

      // Run 1: alice gets seq 1..=4, then quits.
      let a = await connect(server.url, alice.token, { store });
      let ar = new Recorder(a);
      await ar.connected();
      for (let k = 0; k < 3; k++) await b.send(conv, `bob ${k}`);
      await ar.entry(conv, 4);
      await a.close();
      assert.equal((await store.load())?.cursors[String(conv)], 4);

      // While alice is gone: seq 5..=7.
      for (let k = 3; k < 6; k++) await b.send(conv, `bob ${k}`);

      // Run 2: the server is unreachable; alice writes three messages and quits.
      a = await connect(proxy.url, alice.token, { store });
      ar = new Recorder(a);
      const queued: string[] = [];
      for (let k = 0; k < 3; k++) queued.push(await a.sendNowait(conv, `alice ${k}`));
      await ar.waitFor("a failed attempt", (e) => e.type === "connection" && e.state === "reconnecting");
      await a.close();
      assert.ok(proxy.nAccepted > 0, "run 2 did try to connect");
      assert.ok(!ar.seen.some((e) => e.type === "entry" || e.type === "acked"), "run 2 never reached the server");
      const saved = await store.load();
      assert.deepEqual(saved?.outbox.map((i) => i.client_msg_id), queued, "the outbox is saved in the written order");
      assert.equal(saved?.cursors[String(conv)], 4);

      // Run 3: reachable again. It gets 5..=7 (not 1..=4 again), then its own three sends,
      // acked with seqs 8..=10 in the order written.
      a = await connect(server.url, alice.token, { store });
      ar = new Recorder(a);
      assert.deepEqual((await a.outbox()).map((i) => i.client_msg_id), queued, "the loaded outbox is readable");
      const lastAck = a.waitForAck(queued[2] as string);
      const acks = await ar.acks(queued);
      assert.deepEqual(acks.map((x) => x.seq), [8, 9, 10]);
      assert.equal((await lastAck).seq, 10);
      assert.deepEqual(ar.ackedIds(), queued, "the previous run's sends, acked once each, in order");
      if (!ar.entries(conv).some((e) => e.seq === 10)) await ar.entry(conv, 10);
      assert.deepEqual(ar.entries(conv).map((e) => e.seq), [5, 6, 7, 8, 9, 10], "resumed after the saved cursor");
      assert.deepEqual(textsFrom(ar.entries(conv), alice.id), ["alice 0", "alice 1", "alice 2"]);

      await br.entry(conv, 10);
      assertContiguous(br.entries(conv));
      assert.deepEqual(textsFrom(br.entries(conv), alice.id), ["alice 0", "alice 1", "alice 2"], "bob got them once each");

      await a.close();
      const after = await store.load();
      assert.deepEqual(after?.outbox, []);
      assert.equal(after?.cursors[String(conv)], 10);
      assert.equal(after?.user, alice.id);

      // Run 4 has nothing to catch up on: no entry arrives before it is connected.
      a = await connect(server.url, alice.token, { store });
      ar = new Recorder(a);
      await ar.connected();
      assert.ok(!ar.seen.some((e) => e.type === "entry" || e.type === "acked"));
      await a.close();

      // A state saved for another user is not resumed as bob's.
      const c = await connect(server.url, bob.token, { store });
      const cr = new Recorder(c);
      await cr.connected();
      await c.close();
      assert.equal((await store.load())?.user, bob.id);
      await b.close();
    } finally {
      await proxy.stop();
      await server.stop();
      rmSync(dir, { recursive: true, force: true });
    }
  });
}

test("offline (setOnline(false)) drops the connection and holds sends; online delivers them once, in order", async () => {
  const server = await TestServer.start();
  try {
    const alice = await account(server.url, "alice");
    const bob = await account(server.url, "bob");
    const conv = (await alice.api.createDirect(bob.id)).id;
    const a = await connect(server.url, alice.token);
    const ar = new Recorder(a);
    await ar.connected();
    await a.setOnline(false);
    await ar.waitFor("offline", (e) => e.type === "connection" && e.state === "offline");
    const queued: string[] = [];
    for (let k = 0; k < 3; k++) queued.push(await a.sendNowait(conv, `offline ${k}`));
    // Nothing can have gone out: the client holds no connection while offline.
    assert.equal(a.connection().state, "offline");
    assert.deepEqual((await a.outbox()).map((i) => i.client_msg_id), queued);
    const log = await bob.api.history(conv, {}, 100);
    assert.deepEqual(log.entries.map((e) => e.seq), [1], "the server has only the `created` entry");

    await a.setOnline(true);
    const acks = await ar.acks(queued);
    assert.deepEqual(acks.map((x) => x.seq), [2, 3, 4], "acked once each, in the written order");
    const after = await bob.api.history(conv, {}, 100);
    assert.deepEqual(textsFrom(after.entries, alice.id), ["offline 0", "offline 1", "offline 2"]);
  } finally {
    await closeClients();
    await server.stop();
  }
});

/**
 * Gap detection whatever the network does (crates/client/tests/sdk/gaps.rs): a WebSocket
 * relay between the node and the SDK loses chosen live `entry` frames (once each: the
 * history pages that fill the gaps get through), so `seq` jumps; the SDK holds what follows,
 * fills the gap from history and hands the app one contiguous run with no duplicate.
 */
import assert from "node:assert/strict";
import { afterEach, test } from "node:test";
import { WsRelay } from "../testkit/proxies.js";
import { TestServer } from "../testkit/server.js";
import { account, assertContiguous, connect, Recorder, textsFrom, closeClients } from "../testkit/util.js";

afterEach(closeClients);

test("dropped live entries are filled from history before what follows", async () => {
  const server = await TestServer.start();
  const relay = await WsRelay.start(server.url);
  try {
    const alice = await account(server.url, "alice");
    const bob = await account(server.url, "bob");
    const conv = (await alice.api.createDirect(bob.id)).id;
    const lost = new Map([4, 7, 8, 9, 12].map((seq) => [seq, false]));
    relay.dropFrames((f) => {
      if (f.type !== "entry" || f.entry.conversation !== conv || lost.get(f.entry.seq) !== false) return false;
      lost.set(f.entry.seq, true);
      return true;
    });
    const b = await connect(relay.url, bob.token, { transports: ["ws"] });
    const a = await connect(server.url, alice.token);
    const br = new Recorder(b);
    const ar = new Recorder(a);
    await br.connected();
    await ar.connected();

    for (let k = 0; k < 12; k++) await a.send(conv, `m${k}`);
    await br.entry(conv, 13);
    assert.equal(relay.nDropped, 5, "the relay did lose five live entries");
    const atBob = br.entries(conv);
    assert.deepEqual(atBob.map((e) => e.seq), Array.from({ length: 13 }, (_, i) => i + 1));
    assertContiguous(atBob);
    assert.deepEqual(textsFrom(atBob, alice.id), Array.from({ length: 12 }, (_, k) => `m${k}`));
    // Bob stayed on the one connection: the gaps were filled, not reconnected over.
    assert.equal(br.seen.filter((e) => e.type === "connection" && e.state === "reconnecting").length, 0);
    await a.close();
    await b.close();
  } finally {
    await relay.stop();
    await server.stop();
  }
});

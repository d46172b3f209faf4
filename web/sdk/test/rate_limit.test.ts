/**
 * A client over the server's send rate limit slows down instead of failing
 * (crates/client/tests/sdk/rate_limit.rs): every message is acked (none reported failed), in
 * the order written, without a reconnect, and the peer sees each once, in order. On the
 * WebSocket (error frames with `retry_after_ms`) and on long-poll (REST `429`s) alike.
 */
import assert from "node:assert/strict";
import { afterEach, test } from "node:test";
import WebSocket from "ws";
import type { FetchLike } from "../src/api.js";
import type { TransportName } from "../src/transport/conn.js";
import { TestServer } from "../testkit/server.js";
import { account, assertContiguous, connect, Recorder, textsFrom, closeClients } from "../testkit/util.js";

afterEach(closeClients);

const N = 30;
const PER_SEC = 40;
const BURST = 5;

for (const transport of ["ws", "poll"] as TransportName[]) {
  test(`${transport}: over the send limit the outbox slows down and delivers everything in order`, async () => {
    const server = await TestServer.start(["--send-per-sec", String(PER_SEC), "--send-burst", String(BURST)]);
    try {
      const alice = await account(server.url, "alice");
      const bob = await account(server.url, "bob");
      const conv = (await alice.api.createDirect(bob.id)).id;
      // Count the server's refusals, to know the limit was hit.
      let refused = 0;
      class CountingWebSocket extends WebSocket {
        constructor(url: string) {
          super(url);
          this.on("message", (data) => {
            if (String(data).includes('"too_many_requests"')) refused += 1;
          });
        }
      }
      const countingFetch: FetchLike = async (url, init) => {
        const res = await fetch(url, init as RequestInit);
        if (res.status === 429) refused += 1;
        return res;
      };
      const a = await connect(server.url, alice.token, { transports: [transport], WebSocket: CountingWebSocket, fetch: countingFetch });
      const b = await connect(server.url, bob.token);
      const ar = new Recorder(a);
      const br = new Recorder(b);
      await ar.connected();
      await br.connected();
      const from = ar.seen.length;
      const ids: string[] = [];
      for (let i = 0; i < N; i++) ids.push(await a.sendNowait(conv, `m${i}`));
      await ar.acks(ids);
      assert.deepEqual(ar.ackedIds(), ids, "acks in the order written");
      assert.ok(refused > 0, "the server did refuse sends over its limit");
      const later = ar.seen.slice(from);
      assert.ok(!later.some((e) => e.type === "send_failed"), "no send failed");
      assert.ok(!later.some((e) => e.type === "connection"), "slowing down needs no reconnect");
      await br.entry(conv, N + 1);
      assertContiguous(br.entries(conv));
      assert.deepEqual(textsFrom(br.entries(conv), alice.id), ids.map((_, i) => `m${i}`));
      await a.close();
      await b.close();
    } finally {
      await server.stop();
    }
  });
}

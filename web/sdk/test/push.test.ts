/**
 * The SDK's push calls (issue 14) against real nodes: `pushConfig` on a node with push off
 * lists no provider and no VAPID key, and one it refuses to register; on a node with the
 * webhook gateway and Web Push on it lists both with the VAPID public key (a P-256 point), and
 * a Web Push subscription registers, lists with this device and unregisters.
 */
import assert from "node:assert/strict";
import { createECDH, randomBytes } from "node:crypto";
import { afterEach, test } from "node:test";
import { NatterError } from "../src/errors.js";
import { TestServer, pushToml } from "../testkit/server.js";
import { account, closeClients, connect } from "../testkit/util.js";

let server: TestServer | undefined;
afterEach(async () => {
  await closeClients();
  await server?.stop();
  server = undefined;
});

const base64url = (b: Uint8Array): string => Buffer.from(b).toString("base64url");

test("a node with push off offers no provider and refuses a Web Push registration", async () => {
  server = await TestServer.start();
  const alice = await account(server.url, "alice");
  const config = await alice.api.pushConfig();
  assert.deepEqual(config.providers, []);
  assert.equal(config.vapid_public_key ?? undefined, undefined);
  await assert.rejects(
    alice.api.registerPush({ provider: "webpush", token: "https://push.example.test/send/1", p256dh: "x", auth: "y" }),
    (e: unknown) => e instanceof NatterError && e.code === "bad_request",
  );
});

test("Web Push: the VAPID key, and a subscription registered, listed and unregistered", async () => {
  // The gateway is never called: nobody here is sent a message.
  server = await TestServer.start([], pushToml({ webhookUrl: "http://127.0.0.1:9/push", webPush: true, webPushHosts: ["push.example.test"] }));
  const alice = await account(server.url, "alice");
  const config = await alice.api.pushConfig();
  assert.deepEqual([...config.providers].sort(), ["webhook", "webpush"]);
  const key = Buffer.from(config.vapid_public_key ?? "", "base64url");
  assert.equal(key.length, 65, `an uncompressed P-256 point: ${config.vapid_public_key}`);
  assert.equal(key[0], 0x04);
  assert.doesNotMatch(config.vapid_public_key ?? "", /[=+/]/, "base64url without padding");

  // What a browser's PushSubscription carries: its endpoint and its keys.
  const ecdh = createECDH("prime256v1");
  const subscription = {
    provider: "webpush",
    token: `https://push.example.test/send/${base64url(randomBytes(16))}`,
    p256dh: base64url(ecdh.generateKeys()),
    auth: base64url(randomBytes(16)),
  };
  const id = await alice.api.registerPush(subscription);
  const me = await alice.api.me();
  const listed = await alice.api.pushRegistrations();
  assert.deepEqual(
    listed.map((r) => ({ id: r.id, provider: r.provider, device_id: r.device_id })),
    [{ id, provider: "webpush", device_id: me.device_id }],
  );
  await alice.api.unregisterPush(id);
  assert.deepEqual(await alice.api.pushRegistrations(), []);
});

test("mentions: ids sent with a message and @handles in its body, resolved among the members", async () => {
  server = await TestServer.start();
  const alice = await account(server.url, "alice");
  const bob = await account(server.url, "bob");
  const carol = await account(server.url, "carol");
  const dave = await account(server.url, "dave");
  for (const other of [bob, carol, dave]) await alice.api.createDirect(other.id);
  const group = (await alice.api.createGroup("team", [bob.id, carol.id])).id;
  const client = await connect(server.url, alice.token);
  // bob by handle, carol by id; dave is no member: not mentioned.
  const ack = await client.send(group, "hi @Bob and @dave", { mentions: [carol.id, dave.id] });
  const page = await client.history(group, { after: ack.seq - 1 }, 1);
  const entry = page.entries[0];
  assert.ok(entry?.kind === "message", `a message: ${JSON.stringify(entry)}`);
  assert.deepEqual(entry.mentions, [bob.id, carol.id].sort((a, b) => a - b));
});

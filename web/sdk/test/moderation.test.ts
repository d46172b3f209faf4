/**
 * The SDK's block, report, group-moderation and administration calls (issue 13) against a
 * real node (crates/client/tests/sdk/moderation.rs): the block list reaches the blocker's
 * live client as a `blocks` event and the blocked user's sends into their direct
 * conversation are refused; a muted member's send is refused with `muted`; a report reaches
 * an administrator (granted by `natter admin grant`) and is resolved; the export and the
 * audit log read back; a non-administrator is told the admin API does not exist.
 */
import assert from "node:assert/strict";
import { after, afterEach, before, test } from "node:test";
import { NatterError } from "../src/errors.js";
import { TestServer } from "../testkit/server.js";
import { account, closeClients, connect, Recorder } from "../testkit/util.js";

afterEach(closeClients);

let server: TestServer;
before(async () => {
  server = await TestServer.start();
});
after(async () => {
  await server.stop();
});

const refusedWith = (code: string) => (e: unknown) => e instanceof NatterError && e.code === code;

test("blocks, group moderation, reports and administration", async () => {
  const alice = await account(server.url, "alice");
  const bob = await account(server.url, "bob");
  const root = await account(server.url, "root");
  await server.grantAdmin("root");
  const direct = (await alice.api.createDirect(bob.id)).id;
  const group = (await alice.api.createGroup("club", [bob.id])).id;
  // Each client's events are recorded from the moment it exists, so that its `connected`
  // cannot come before anyone listens.
  const aliceClient = await connect(server.url, alice.token);
  const a = new Recorder(aliceClient);
  const bobClient = await connect(server.url, bob.token);
  const b = new Recorder(bobClient);
  await a.connected();
  await b.connected();

  await alice.api.block(bob.id);
  const list = await a.waitFor("the block list", (e) => (e.type === "blocks" ? e.blocked : undefined));
  assert.deepEqual(list, [bob.id]);
  assert.deepEqual(await alice.api.blocks(), [bob.id]);
  await assert.rejects(bobClient.send(direct, "hello?"), refusedWith("forbidden"));
  await alice.api.unblock(bob.id);
  await bobClient.send(direct, "friends again");

  await alice.api.mute(group, bob.id, 600);
  await assert.rejects(bobClient.send(group, "and now?"), refusedWith("muted"));
  assert.ok((await alice.api.members(group)).find((m) => m.user_id === bob.id)?.muted_until);
  await alice.api.unmute(group, bob.id);
  const said = await bobClient.send(group, "thanks");
  await alice.api.setGroupSettings(group, { locked: true });
  assert.equal((await bob.api.conversation(group)).locked, true);
  await alice.api.setGroupSettings(group, {});
  await alice.api.ban(group, bob.id);
  assert.deepEqual((await alice.api.bans(group)).map((b) => b.user_id), [bob.id]);
  await alice.api.unban(group, bob.id);

  const id = await alice.api.reportMessage(group, said.seq, "rude");
  await assert.rejects(bob.api.reports(), refusedWith("not_found"));
  const queue = await root.api.reports({ status: "open" });
  const filed = queue.reports.find((r) => r.id === id);
  assert.equal((filed?.snapshot as { body?: string }).body, "thanks");
  assert.equal(filed?.reporter_handle, "alice");
  await root.api.resolveReport(id, "dismissed", "fine");
  const found = await root.api.adminUsers({ q: "bo" });
  assert.deepEqual(found.users.map((u) => u.user.handle), ["bob"]);
  await root.api.suspend(bob.id, "cool off", { forSecs: 60 });
  await root.api.restore(bob.id);
  const audit = await root.api.auditLog();
  assert.deepEqual(audit.entries.map((e) => e.action), ["restore", "suspend", "dismiss_report", "grant_admin"]);

  const archive = await alice.api.exportData();
  assert.equal(archive["format"], "natter-export/1");
});

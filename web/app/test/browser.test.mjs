// The web client in real headless Chromium (Debian's, driven by playwright-core) against the
// real server binary: two users chat with typing, read marks and a reaction; one goes
// offline, writes three messages and comes back; a reload and a browser restart keep the
// conversation and the outbox; an image arrives as a thumbnail; replies, edits and deletions
// show on the other side; a profile edit (name, status, avatar) shows in the other's open chat;
// older history loads on scroll; two tabs share one server session
// and closing the first hands over; a report filed in the web client shows up in the admin
// page, whose removal the reporter's chat shows, and a block refuses the other's messages;
// a page on another origin is refused; Web Push: the account panel offers notifications when
// the server has Web Push, the service worker shows a pushed notification (tag, title, body),
// a `clear` push closes it, and its click opens the chat in the app's tab; a search lists
// its hits with the matches marked and a hit opens its chat at that message. The pages
// reach the server through a test proxy that can refuse the live transports and writes (so
// the outbox holds sends while pages still load). Screenshots go to NATTER_SCREENSHOTS
// (default target/screenshots; docs/screenshots holds the committed ones).
import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { deflateSync } from "node:zlib";
import { chromium } from "playwright-core";
import { HttpProxy } from "../../sdk/dist/testkit/proxies.js";
import { TestServer, pushToml } from "../../sdk/dist/testkit/server.js";

const REPO = fileURLToPath(new URL("../../../", import.meta.url));
const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
const SHOTS = process.env.NATTER_SCREENSHOTS ?? join(REPO, "target", "screenshots");
const METRICS_TOKEN = "browser-test-metrics-token";
const PASSWORD = "correct horse battery staple 42";
const WAIT = 20_000;
const ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

let server;
let proxy;
let browser;
let bobDir;
const contexts = {};
const pages = {};
let conv;

before(async () => {
  mkdirSync(SHOTS, { recursive: true });
  server = await TestServer.start(["--metrics-token", METRICS_TOKEN]);
  proxy = await HttpProxy.start(server.url);
  browser = await chromium.launch({ executablePath: CHROMIUM, args: ARGS });
  bobDir = mkdtempSync(join(tmpdir(), "natter-chromium-bob-"));
});

after(async () => {
  await contexts.bob?.close().catch(() => undefined);
  await browser?.close();
  await proxy?.stop();
  await server?.stop();
  if (bobDir) rmSync(bobDir, { recursive: true, force: true });
});

/** Bob's browser has a profile on disk, so that it can be closed and started again. */
function launchBob() {
  return chromium.launchPersistentContext(bobDir, { executablePath: CHROMIUM, args: ARGS, viewport: { width: 1100, height: 760 } });
}

function watchErrors(page, who) {
  page.on("pageerror", (e) => console.error(`[${who}] page error: ${e.message}`));
}

async function connected(page) {
  await page.waitForFunction(() => document.body.dataset.connection === "connected", null, { timeout: WAIT });
}

async function signUp(page, handle) {
  await page.goto(proxy.url);
  await page.fill("#handle", handle);
  await page.fill("#password", PASSWORD);
  await page.click("#register");
  await page.waitForSelector(`#me:text-is("${handle}")`, { timeout: WAIT });
  await connected(page);
}

/** The texts of the messages in the open chat, in order (pending ones included). */
function texts(page) {
  return page.$$eval("#messages .msg .text", (els) => els.map((e) => e.textContent));
}

async function waitText(page, text) {
  await page.waitForFunction((t) => [...document.querySelectorAll("#messages .msg:not(.pending) .text")].some((e) => e.textContent === t), text, { timeout: WAIT });
}

async function send(page, text) {
  await page.fill("#text", text);
  await page.press("#text", "Enter");
}

async function seqOf(page, text) {
  return page.$$eval("#messages .msg:not(.pending)", (els, t) => Number(els.find((e) => e.querySelector(".text")?.textContent === t)?.dataset.seq), text);
}

async function sessions() {
  const res = await fetch(`${server.url}/metrics`, { headers: { authorization: `Bearer ${METRICS_TOKEN}` } });
  const m = /^natter_connections (\d+)/m.exec(await res.text());
  return Number(m?.[1]);
}

async function waitSessions(n) {
  const deadline = Date.now() + WAIT;
  let last;
  while (Date.now() < deadline) {
    last = await sessions();
    if (last === n) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  assert.fail(`server sessions: ${last}, wanted ${n}`);
}

/** Refuses the live transports and every write; pages, reads and history still load. */
function blockLive(on) {
  proxy.refuse = on ? (method, path, kind) => kind !== "http" || path.startsWith("/v1/poll") || path.startsWith("/v1/tickets") || (method !== "GET" && path.startsWith("/v1/")) : undefined;
  if (on) {
    proxy.end("ws");
    proxy.end("sse");
  }
}

function exactlyOnceInOrder(all, wanted) {
  const got = all.filter((t) => wanted.includes(t));
  assert.deepEqual(got, wanted, `each once, in order: ${JSON.stringify(all)}`);
}

describe("the web client in Chromium", () => {
  it("two users register, open a direct chat, and exchange messages with typing, read marks and a reaction", async () => {
    contexts.alice = await browser.newContext({ viewport: { width: 1100, height: 760 } });
    contexts.bob = await launchBob();
    pages.alice = await contexts.alice.newPage();
    pages.bob = contexts.bob.pages()[0] ?? (await contexts.bob.newPage());
    watchErrors(pages.alice, "alice");
    watchErrors(pages.bob, "bob");
    await signUp(pages.alice, "alice");
    await signUp(pages.bob, "bob");

    const { alice, bob } = pages;
    await alice.click("#new summary");
    await alice.fill("#peer", "bob");
    await alice.press("#peer", "Enter");
    await alice.waitForSelector('#chat-title:has-text("bob")', { timeout: WAIT });
    conv = Number(new URL(alice.url()).hash.match(/c=(\d+)/)?.[1]);
    assert.ok(conv > 0, `the chat is open: ${alice.url()}`);
    await send(alice, "hello bob");
    await waitText(alice, "hello bob");

    // Bob's list shows the chat with alice, its preview and an unread badge.
    const item = bob.locator(`button.conv[data-conv="${conv}"]`);
    await item.locator('.preview:has-text("hello bob")').waitFor({ timeout: WAIT });
    await item.locator('.badge:text-is("1")').waitFor({ timeout: WAIT });
    await item.click();
    await waitText(bob, "hello bob");

    // Bob read it: alice's message gets the read mark.
    const helloSeq = await seqOf(alice, "hello bob");
    await alice.locator(`#messages .msg.mine[data-seq="${helloSeq}"] .mark.read`).waitFor({ timeout: WAIT });

    // Typing shows on the other side while bob types, and goes when he sends.
    await bob.fill("#text", "hi al");
    await bob.type("#text", "ice");
    await alice.waitForSelector('#chat-sub:has-text("bob is typing")', { timeout: WAIT });
    await alice.screenshot({ path: join(SHOTS, "typing.png") });
    await bob.press("#text", "Enter");
    await waitText(alice, "hi alice");
    await alice.waitForFunction(() => !document.querySelector("#chat-sub")?.textContent?.includes("typing"), null, { timeout: WAIT });

    // Bob reacts to alice's message from its actions.
    await bob.click(`#messages .msg[data-seq="${helloSeq}"] .more`);
    await bob.click('button[aria-label="React 👍"]');
    await alice.locator(`#messages .msg[data-seq="${helloSeq}"] .reaction:has-text("👍 1")`).waitFor({ timeout: WAIT });
    await alice.screenshot({ path: join(SHOTS, "chat.png") });
  });

  it("offline, three messages wait in the outbox; back online, the other sees them once, in order", async () => {
    const { alice, bob } = pages;
    await contexts.bob.setOffline(true);
    await bob.waitForFunction(() => document.body.dataset.connection !== "connected", null, { timeout: WAIT });
    await bob.locator("#banner:not([hidden])").waitFor({ timeout: WAIT });
    for (const t of ["offline 1", "offline 2", "offline 3"]) await send(bob, t);
    await bob.locator("#messages .msg.pending").nth(2).waitFor({ timeout: WAIT });
    assert.equal(await bob.locator("#messages .msg.pending").count(), 3, "shown at once, as pending");
    await bob.screenshot({ path: join(SHOTS, "offline.png") });
    await contexts.bob.setOffline(false);
    await waitText(alice, "offline 3");
    await bob.locator("#messages .msg.pending").first().waitFor({ state: "detached", timeout: WAIT });
    exactlyOnceInOrder(await texts(alice), ["offline 1", "offline 2", "offline 3"]);
    exactlyOnceInOrder(await texts(bob), ["offline 1", "offline 2", "offline 3"]);
  });

  it("a reload and a browser restart keep the conversation and the outbox", async () => {
    const { alice } = pages;
    blockLive(true);
    await pages.bob.waitForFunction(() => document.body.dataset.connection !== "connected", null, { timeout: WAIT });
    await send(pages.bob, "kept across a reload");
    await pages.bob.locator("#messages .msg.pending").waitFor({ timeout: WAIT });
    await pages.bob.reload();
    await pages.bob.waitForSelector(`#chat-title:has-text("alice")`, { timeout: WAIT });
    await pages.bob.locator('#messages .msg.pending .text:text-is("kept across a reload")').waitFor({ timeout: WAIT });
    await waitText(pages.bob, "hi alice");

    // The whole browser goes; what it held in IndexedDB comes back with it.
    await contexts.bob.close();
    contexts.bob = await launchBob();
    pages.bob = contexts.bob.pages()[0] ?? (await contexts.bob.newPage());
    watchErrors(pages.bob, "bob");
    await pages.bob.goto(`${proxy.url}/#c=${conv}`);
    await pages.bob.locator('#messages .msg.pending .text:text-is("kept across a reload")').waitFor({ timeout: WAIT });
    blockLive(false);
    await waitText(alice, "kept across a reload");
    await pages.bob.locator("#messages .msg.pending").waitFor({ state: "detached", timeout: WAIT });
    exactlyOnceInOrder(await texts(alice), ["offline 3", "kept across a reload"]);
  });

  it("an image attachment shows as a thumbnail for the other user", async () => {
    const { alice, bob } = pages;
    await connected(bob);
    await bob.setInputFiles("#file", { name: "gradient.png", mimeType: "image/png", buffer: png(400, 300) });
    await bob.locator("#uploads .upload").waitFor({ timeout: WAIT });
    await bob.screenshot({ path: join(SHOTS, "upload.png") });
    await bob.fill("#text", "a picture");
    await bob.press("#text", "Enter");
    await waitText(alice, "a picture");
    const img = alice.locator('#messages .msg:has(.text:text-is("a picture")) a.image img');
    await img.waitFor({ timeout: WAIT });
    assert.match(await img.getAttribute("src"), /\/v1\/media\/[^/]+\/thumbnail\?/);
    await alice.waitForFunction((el) => el.complete && el.naturalWidth > 0, await img.elementHandle(), { timeout: WAIT });
    const { w, h } = await img.evaluate((el) => ({ w: el.naturalWidth, h: el.naturalHeight }));
    assert.ok(w > 0 && w <= 400 && h > 0 && h <= 300, `a thumbnail, not larger than the image: ${w}x${h}`);
    await alice.screenshot({ path: join(SHOTS, "attachment.png") });
  });

  it("a reply quotes its message, and an edit and a deletion show on the other side", async () => {
    const { alice, bob } = pages;
    await connected(alice);
    const helloSeq = await seqOf(bob, "hello bob");
    await bob.click(`#messages .msg[data-seq="${helloSeq}"] .more`);
    await bob.click('#messages .actions button:text-is("Reply")');
    await bob.locator('#context .quote:has-text("hello bob")').waitFor({ timeout: WAIT });
    await send(bob, "a reply");
    const reply = alice.locator('#messages .msg:has(.text:text-is("a reply"))');
    await reply.locator('.quote:has-text("hello bob")').waitFor({ timeout: WAIT });

    await alice.click(`#messages .msg[data-seq="${helloSeq}"] .more`);
    await alice.click('#messages .actions button:text-is("Edit")');
    assert.equal(await alice.inputValue("#text"), "hello bob", "the composer holds the text to edit");
    await alice.fill("#text", "hello, bob");
    await alice.press("#text", "Enter");
    const theirs = bob.locator(`#messages .msg[data-seq="${helloSeq}"]`);
    await theirs.locator('.text:text-is("hello, bob")').waitFor({ timeout: WAIT });
    await theirs.locator(".edited").waitFor({ timeout: WAIT });

    alice.once("dialog", (d) => void d.accept());
    await alice.click(`#messages .msg[data-seq="${helloSeq}"] .more`);
    await alice.click('#messages .actions button:text-is("Delete")');
    await bob.locator(`#messages .msg.deleted[data-seq="${helloSeq}"]`).waitFor({ timeout: WAIT });
    assert.equal(await theirs.locator(".text").count(), 0, "a deleted message keeps no text");
    await bob.locator('#messages .msg:has(.text:text-is("a reply")) .quote:has-text("deleted message")').waitFor({ timeout: WAIT });
  });

  it("a profile edited in the web client, avatar included, shows in the other's open chat without a reload", async () => {
    const { alice, bob } = pages;
    await bob.waitForSelector('#chat-title:has-text("alice")', { timeout: WAIT });
    await alice.click("#profile summary");
    await alice.fill("#display-name", "Alice Liddell");
    await alice.fill("#status-text", "down the rabbit hole");
    await alice.setInputFiles("#avatar-file", { name: "me.png", mimeType: "image/png", buffer: png(200, 200) });
    await alice.locator('#profile-note:text-is("Saved.")').waitFor({ timeout: WAIT });
    await alice.locator("#my-avatar img").waitFor({ timeout: WAIT });
    // Bob's open chat changes by itself: the name, the status, the picture.
    await bob.locator('#chat-title:has-text("Alice Liddell")').waitFor({ timeout: WAIT });
    await bob.locator('#chat-sub:has-text("down the rabbit hole")').waitFor({ timeout: WAIT });
    const pic = bob.locator("#chat-title .avatar img");
    await pic.waitFor({ timeout: WAIT });
    assert.match(await pic.getAttribute("src"), /\/v1\/media\/[^/]+\/(thumbnail|content)\?/);
    await bob.waitForFunction((el) => el.complete && el.naturalWidth > 0, await pic.elementHandle(), { timeout: WAIT });
    await bob.locator(`button.conv[data-conv="${conv}"] .title:text-is("Alice Liddell")`).waitFor({ timeout: WAIT });
    await alice.screenshot({ path: join(SHOTS, "profile.png") });
    await bob.screenshot({ path: join(SHOTS, "profile-seen.png") });
  });

  it("older history loads as the chat scrolls up, each message once, in order", async () => {
    const { bob } = pages;
    const login = await fetch(`${server.url}/v1/sessions`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ handle: "alice", password: PASSWORD }) });
    const { token } = await login.json();
    const call = async (method, path, body) => {
      const res = await fetch(`${server.url}${path}`, { method, headers: { authorization: `Bearer ${token}`, "content-type": "application/json" }, body: JSON.stringify(body) });
      assert.ok(res.ok, `${method} ${path}: ${res.status}`);
      return res.json();
    };
    const bobId = (await (await fetch(`${server.url}/v1/users/bob`, { headers: { authorization: `Bearer ${token}` } })).json()).user_id;
    const group = await call("POST", "/v1/conversations", { kind: "group", title: "history", members: [bobId] });
    const wanted = Array.from({ length: 120 }, (_, k) => `history ${k}`);
    for (const [k, body] of wanted.entries()) await call("POST", `/v1/conversations/${group.id}/entries`, { client_msg_id: `h${k}`, kind: "message", body });

    await bob.locator(`button.conv[data-conv="${group.id}"] .preview:has-text("history 119")`).waitFor({ timeout: WAIT });
    await bob.click(`button.conv[data-conv="${group.id}"]`);
    await waitText(bob, "history 119");
    assert.ok((await texts(bob)).length < 120, "the chat opens on its latest page");
    // Scrolling to the top loads the page before, until the first message.
    await bob.waitForFunction(
      () => {
        const box = document.querySelector("#messages");
        box.scrollTop = 0;
        box.dispatchEvent(new Event("scroll"));
        return [...box.querySelectorAll(".msg .text")].some((e) => e.textContent === "history 0");
      },
      null,
      { timeout: WAIT, polling: 100 },
    );
    exactlyOnceInOrder(await texts(bob), wanted);
    await bob.locator('#messages .note:has-text("created the group")').waitFor({ timeout: WAIT });
  });

  it("two tabs of one user hold one server session, and closing the first hands over", async () => {
    const { bob } = pages;
    await waitSessions(2);
    const second = await contexts.alice.newPage();
    watchErrors(second, "alice, tab 2");
    await second.goto(`${proxy.url}/#c=${conv}`);
    await connected(second);
    assert.equal(await second.textContent("#shared"), "shared by this browser's tabs");
    await waitText(second, "a picture");
    await waitSessions(2);
    await pages.alice.close();
    pages.alice = second;
    await bob.click(`button.conv[data-conv="${conv}"]`);
    await waitText(bob, "a picture");
    await send(bob, "after the first tab closed");
    await waitText(second, "after the first tab closed");
    assert.equal(await sessions(), 2, "still one session for alice and one for bob");
    // A phone-sized window: one column, the chat with a back button.
    await second.setViewportSize({ width: 390, height: 780 });
    await second.screenshot({ path: join(SHOTS, "phone-chat.png") });
    await second.click("#back");
    await second.screenshot({ path: join(SHOTS, "phone-list.png") });
  });

  it("a report filed in the web client shows up in the admin page; a moderator's removal and a block show", async () => {
    const { alice, bob } = pages;
    await alice.setViewportSize({ width: 1100, height: 760 });
    await alice.click(`button.conv[data-conv="${conv}"]`);
    await waitText(alice, "after the first tab closed");
    const created = await fetch(`${server.url}/v1/accounts`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ handle: "root", password: PASSWORD }) });
    assert.equal(created.status, 201);
    await server.grantAdmin("root");

    // Alice reports bob's message from its actions.
    const seq = await seqOf(alice, "after the first tab closed");
    await alice.click(`#messages .msg[data-seq="${seq}"] .more`);
    await alice.click('#messages .actions button:text-is("Report")');
    await alice.fill("#messages .report-form input", "rude and unkind");
    await alice.click('#messages .report-form button[type="submit"]');
    await alice.locator('#composer-note:has-text("Reported")').waitFor({ timeout: WAIT });

    // The administrator's admin page has it, with what was said and why.
    contexts.root = await browser.newContext({ viewport: { width: 1100, height: 760 } });
    const root = await contexts.root.newPage();
    watchErrors(root, "root");
    await root.goto(proxy.url);
    await root.fill("#handle", "root");
    await root.fill("#password", PASSWORD);
    await root.click("#sign-in");
    await root.locator("#admin-open:not([hidden])").waitFor({ timeout: WAIT });
    assert.equal(await alice.locator("#admin-open").isHidden(), true, "no admin page for alice");
    await root.click("#admin-open");
    const card = root.locator('#admin-reports .report:has(.snapshot:text-is("after the first tab closed"))');
    await card.waitFor({ timeout: WAIT });
    assert.match(await card.textContent(), /Reason: rude and unkind/);
    assert.match(await card.locator(".who").textContent(), /by @bob · reported by @alice/);
    await root.screenshot({ path: join(SHOTS, "admin.png") });

    // Removing it: alice's open chat shows the tombstone; the audit log has the action.
    await card.locator('button:text-is("Remove message")').click();
    await alice.locator(`#messages .msg[data-seq="${seq}"] em:text-is("Removed by a moderator")`).waitFor({ timeout: WAIT });
    await root.locator('#admin-audit li:has-text("remove_message")').waitFor({ timeout: WAIT });
    await root.locator('#admin-reports .report:has(.snapshot:text-is("after the first tab closed"))').waitFor({ state: "detached", timeout: WAIT });

    // Alice blocks bob from the chat's header: her list has him, and his next message is refused.
    alice.once("dialog", (d) => void d.accept());
    await alice.click('#chat-tools button:text-is("Block")');
    await alice.locator('#chat-tools button:text-is("Unblock")').waitFor({ timeout: WAIT });
    await alice.locator("#blocked li[data-blocked]").waitFor({ state: "attached", timeout: WAIT });
    await send(bob, "can you hear me?");
    await bob.locator("#messages .msg.pending.failed").waitFor({ timeout: WAIT });
    await alice.click('#chat-tools button:text-is("Unblock")');
    await alice.locator('#chat-tools button:text-is("Block")').waitFor({ timeout: WAIT });
    await contexts.root.close();
  });

  it("a page on another origin is refused", async () => {
    const other = createServer((_, res) => res.end("<!doctype html><title>elsewhere</title>"));
    await new Promise((r) => other.listen(0, "127.0.0.1", r));
    try {
      const page = await contexts.alice.newPage();
      await page.goto(`http://localhost:${other.address().port}/`);
      const token = (await (await fetch(`${server.url}/v1/sessions`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ handle: "alice", password: PASSWORD }) })).json()).token;
      const result = await page.evaluate(
        async ({ base, token }) => {
          const ws = await new Promise((resolve) => {
            const s = new WebSocket(base.replace("http", "ws") + "/v1/ws");
            s.onopen = () => resolve("open");
            s.onclose = (e) => resolve(`closed ${e.code}`);
          });
          const rest = await fetch(`${base}/v1/me`, { headers: { authorization: `Bearer ${token}` } }).then(
            (r) => `answered ${r.status}`,
            (e) => `blocked: ${e.name}`,
          );
          return { ws, rest };
        },
        { base: server.url, token },
      );
      assert.deepEqual(result, { ws: "closed 1006", rest: "blocked: TypeError" });
      await page.close();
    } finally {
      other.close();
    }
  });

  it("Chromium's WebSocket speaks permessage-deflate with the server: agreed when asked, compressed frames read", async () => {
    const page = await contexts.alice.newPage();
    await page.goto(`${server.url}/`);
    const token = (await (await fetch(`${server.url}/v1/sessions`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ handle: "alice", password: PASSWORD }) })).json()).token;
    const result = await page.evaluate(
      async ({ token, wait }) => {
        const open = async (query) => {
          const ws = new WebSocket(`${location.origin.replace("http", "ws")}/v1/ws${query}`);
          await new Promise((resolve, reject) => {
            ws.onopen = resolve;
            ws.onerror = reject;
          });
          return ws;
        };
        const plain = await open("");
        const plainExtensions = plain.extensions;
        plain.close();
        const ws = await open("?compress=deflate");
        // Auth, then a sync: alice's history comes as one large frame, compressed by the server.
        const frames = [];
        const synced = new Promise((resolve, reject) => {
          setTimeout(() => reject(new Error("no synced frame")), wait);
          ws.onmessage = (e) => {
            const frame = JSON.parse(e.data);
            frames.push(frame.type);
            if (frame.type === "ready") ws.send(JSON.stringify({ type: "sync", req_id: 1, cursors: {} }));
            if (frame.type === "synced") resolve({ bytes: e.data.length, conversations: frame.conversations.length });
          };
        });
        ws.send(JSON.stringify({ type: "auth", token }));
        const page = await synced;
        ws.close();
        return { plainExtensions, extensions: ws.extensions, frames: frames.slice(0, 2), ...page };
      },
      { token, wait: WAIT },
    );
    assert.equal(result.plainExtensions, "", "not asked: not compressed");
    assert.equal(result.extensions, "permessage-deflate; server_no_context_takeover; client_no_context_takeover");
    assert.deepEqual(result.frames, ["ready", "synced"]);
    assert.ok(result.conversations >= 1 && result.bytes > 1024, JSON.stringify(result));
    await page.close();
  });

  it("a search lists its hits with the matches marked; a hit opens its chat at that message; no hits is said so", async () => {
    // Sam's messages in two chats; the older hit is far enough back to be outside the
    // direct chat's latest page, so the chat opens on a window around it.
    const sam = await restAccount(server.url, "sam");
    const tess = await restAccount(server.url, "tess");
    const direct = (await sam.call("POST", "/v1/conversations", { kind: "direct", peer: tess.user_id })).id;
    const group = (await sam.call("POST", "/v1/conversations", { kind: "group", title: "Launch", members: [tess.user_id] })).id;
    const post = (who, conv, body) => who.call("POST", `/v1/conversations/${conv}/entries`, { client_msg_id: crypto.randomUUID(), kind: "message", body });
    const older = await post(tess, direct, "the comet is visible tonight");
    for (let k = 0; k < 60; k++) await post(k % 2 ? sam : tess, direct, `later ${k}`);
    const newer = await post(sam, group, "a comet cake for the launch party");

    const context = await browser.newContext({ viewport: { width: 1100, height: 760 } });
    try {
      const page = await context.newPage();
      watchErrors(page, "sam");
      await page.goto(proxy.url);
      await page.fill("#handle", "sam");
      await page.fill("#password", PASSWORD);
      await page.click("#sign-in");
      await page.waitForSelector('#me:text-is("sam")', { timeout: WAIT });
      await connected(page);

      const box = page.getByRole("searchbox", { name: "Search messages" });
      const results = page.getByRole("region", { name: "Search results" });
      await box.fill("comet");
      await box.press("Enter");
      const hits = results.locator("button.hit");
      await hits.nth(1).waitFor({ timeout: WAIT });
      await results.getByRole("status").filter({ hasText: "2 messages" }).waitFor({ timeout: WAIT });
      // Newest first, each with its chat, sender, time and the match marked.
      const shown = await hits.evaluateAll((els) =>
        els.map((el) => ({
          at: `${el.dataset.conv}:${el.dataset.seq}`,
          title: el.querySelector(".title").textContent,
          sender: el.querySelector(".sender").textContent,
          when: el.querySelector("time").getAttribute("datetime") !== null,
          snippet: el.querySelector(".snippet").textContent,
          marked: [...el.querySelectorAll("mark")].map((m) => m.textContent),
        })),
      );
      assert.deepEqual(shown, [
        { at: `${group}:${newer.seq}`, title: "Launch", sender: "You: ", when: true, snippet: "You: a comet cake for the launch party", marked: ["comet"] },
        { at: `${direct}:${older.seq}`, title: "tess", sender: "tess: ", when: true, snippet: "tess: the comet is visible tonight", marked: ["comet"] },
      ]);
      assert.equal(await page.locator("#convs").isHidden(), true, "the results take the chat list's place");
      await page.screenshot({ path: join(SHOTS, "search.png") });

      // The older hit: its chat opens around the message, scrolled to it and highlighted.
      await results.getByRole("button", { name: /the comet is visible tonight/ }).click();
      await page.waitForSelector('#chat-title:has-text("tess")', { timeout: WAIT });
      await page.waitForFunction(
        (seq) => {
          const el = document.querySelector(`#messages .msg.found[data-seq="${seq}"]`);
          if (el?.querySelector(".text")?.textContent !== "the comet is visible tonight") return false;
          const [m, view] = [el.getBoundingClientRect(), document.querySelector("#messages").getBoundingClientRect()];
          return m.top >= view.top && m.bottom <= view.bottom;
        },
        older.seq,
        { timeout: WAIT },
      );
      await page.screenshot({ path: join(SHOTS, "search-found.png") });
      assert.equal(await page.locator('#messages .msg .text:text-is("later 59")').count(), 0, "a window around the hit, not the latest page");
      assert.equal(await results.getByRole("button", { name: /the comet is visible tonight/ }).getAttribute("aria-current"), "true");
      // The highlight goes by itself; the chat moves on to the latest when asked.
      await page.locator("#messages .msg.found").waitFor({ state: "detached", timeout: WAIT });
      await page.getByRole("button", { name: "Jump to the latest messages" }).click();
      await waitText(page, "later 59");

      // A search with no hits says so; Escape closes the results and the chat list is back.
      await box.fill("zebra");
      await box.press("Enter");
      await results.getByText("No messages match “zebra”.").waitFor({ timeout: WAIT });
      await box.press("Escape");
      await results.waitFor({ state: "hidden", timeout: WAIT });
      await page.locator(`button.conv[data-conv="${group}"]`).waitFor({ timeout: WAIT });
    } finally {
      await context.close();
    }
  });
});

// Web Push, on a server of its own with Web Push on. Headless Chromium has no push service,
// so a subscription is refused (the panel says so); the pushes are handed to the service
// worker over the DevTools protocol (`ServiceWorker.deliverPushMessage`), as the browser
// would after decrypting them, and what it shows is read back with `getNotifications()`.
describe("Web Push in Chromium", () => {
  let pushServer;
  let context;

  before(async () => {
    pushServer = await TestServer.start([], pushToml({ webPush: true }));
  });

  after(async () => {
    await context?.close().catch(() => undefined);
    await pushServer?.stop();
  });

  it("the account panel offers notifications; a push shows one per chat, a clear closes it, a click opens the chat", async () => {
    const origin = pushServer.url;
    const dana = await restAccount(origin, "dana");
    const erin = await restAccount(origin, "erin");
    const direct = (await dana.call("POST", "/v1/conversations", { kind: "direct", peer: erin.user_id })).id;
    const group = (await dana.call("POST", "/v1/conversations", { kind: "group", title: "Team", members: [erin.user_id] })).id;
    const config = await dana.call("GET", "/v1/push/config");
    assert.ok(config.providers.includes("webpush"), `the server lists webpush: ${JSON.stringify(config)}`);
    assert.match(config.vapid_public_key, /^[A-Za-z0-9_-]{87}$/, "a 65-byte key, base64url without padding");
    const script = await fetch(`${origin}/app/sw.js`);
    assert.equal(script.status, 200, "the server serves the service worker (crates/server/src/http/webapp.rs, ASSETS)");
    assert.match(script.headers.get("content-type"), /^text\/javascript/);

    context = await browser.newContext({ viewport: { width: 1100, height: 760 } });
    await context.grantPermissions(["notifications"], { origin });
    const page = await context.newPage();
    watchErrors(page, "dana");
    const workers = await ServiceWorkers.watch(await context.newCDPSession(page));
    await page.goto(origin);
    await page.fill("#handle", "dana");
    await page.fill("#password", PASSWORD);
    await page.click("#sign-in");
    await page.waitForSelector('#me:text-is("dana")', { timeout: WAIT });
    await connected(page);

    // The control: asks, registers the service worker, tries to subscribe. Without a push
    // service the subscription fails, visibly, and the rest of the app goes on.
    await page.click("#account summary");
    const panel = page.getByRole("region", { name: "Notifications" });
    const enable = panel.getByRole("button", { name: "Enable notifications" });
    await enable.waitFor({ timeout: WAIT });
    await enable.click();
    const note = panel.getByRole("status");
    await page.waitForFunction(() => /could not be turned on|are on/.test(document.querySelector("#push-note")?.textContent ?? ""), null, { timeout: WAIT });
    if (/are on/.test(await note.textContent())) {
      // A browser with a push service: the server has this device's registration.
      const regs = (await dana.call("GET", "/v1/me/push")).registrations;
      assert.ok(regs.some((r) => r.provider === "webpush"), JSON.stringify(regs));
    } else {
      assert.match(await note.textContent(), /^Notifications could not be turned on: .+/);
      await enable.waitFor({ timeout: WAIT }); // offered again
    }
    await page.screenshot({ path: join(SHOTS, "push-panel.png") });
    await connected(page);

    const scope = `${origin}/app/`;
    const registrationId = await workers.activated(scope).catch(async (err) => assert.fail(`${err.message}; the panel says: ${await note.textContent()}`));
    const push = (payload) => workers.cdp.send("ServiceWorker.deliverPushMessage", { origin, registrationId, data: JSON.stringify(payload) });

    // A group's notification: the group's title, the sender before the text, one per chat.
    await push({ kind: "notify", conversation: group, collapse_id: `c${group}`, first_seq: 3, last_seq: 5, count: 3, title: "Team", sender: "erin", body: "3 new messages" });
    await waitShown(page, `c${group}`, [{ title: "Team", body: "erin: 3 new messages", tag: `c${group}`, data: { conversation: group } }]);
    // A payload with no title, sender or body: the worker's defaults.
    await push({ kind: "notify", conversation: direct, collapse_id: `c${direct}`, first_seq: 1, last_seq: 1, count: 1 });
    await waitShown(page, `c${direct}`, [{ title: "Natter", body: "New message", tag: `c${direct}`, data: { conversation: direct } }]);
    // A later push for the same chat replaces its notification.
    await push({ kind: "notify", conversation: direct, collapse_id: `c${direct}`, first_seq: 1, last_seq: 2, count: 2, sender: "erin", body: "2 new messages" });
    const replaced = [{ title: "erin", body: "2 new messages", tag: `c${direct}`, data: { conversation: direct } }];
    await waitShown(page, `c${direct}`, replaced);

    // Read elsewhere: a clear closes that chat's notification, and only that one.
    await push({ kind: "clear", conversation: group, collapse_id: `c${group}`, first_seq: 3, last_seq: 5, count: 3 });
    await waitShown(page, `c${group}`, []);
    // The other chat's notification stays (waited for: a loaded machine may still be
    // settling the replacement above).
    await waitShown(page, `c${direct}`, replaced);

    // A click: the notification goes, and the app's tab opens the chat.
    const sw = context.serviceWorkers().find((w) => w.url() === `${scope}sw.js`) ?? (await context.waitForEvent("serviceworker", { timeout: WAIT }));
    await sw.evaluate(async (tag) => {
      const [n] = await self.registration.getNotifications({ tag });
      // A click as the browser reports it (its waitUntil throws for an event made here, but
      // the handler's work has started by then).
      self.dispatchEvent(new NotificationEvent("notificationclick", { notification: n }));
    }, `c${direct}`);
    await page.waitForSelector('#chat-title:has-text("erin")', { timeout: WAIT });
    assert.match(page.url(), new RegExp(`#c=${direct}$`));
    await waitShown(page, `c${direct}`, []);

    // Opening a chat here closes its pushed notification.
    await push({ kind: "notify", conversation: group, collapse_id: `c${group}`, first_seq: 6, last_seq: 6, count: 1, title: "Team", sender: "erin", body: "lunch?" });
    await waitShown(page, `c${group}`, [{ title: "Team", body: "erin: lunch?", tag: `c${group}`, data: { conversation: group } }]);
    await page.click(`button.conv[data-conv="${group}"]`);
    await page.waitForSelector('#chat-title:has-text("Team")', { timeout: WAIT });
    await waitShown(page, `c${group}`, []);
  });
});

/** An account made over REST, and its calls. */
async function restAccount(base, handle) {
  const post = (path, body) => fetch(`${base}${path}`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });
  assert.equal((await post("/v1/accounts", { handle, password: PASSWORD })).status, 201);
  const session = await (await post("/v1/sessions", { handle, password: PASSWORD, device: "rest" })).json();
  const call = async (method, path, body) => {
    const res = await fetch(`${base}${path}`, {
      method,
      headers: { authorization: `Bearer ${session.token}`, "content-type": "application/json" },
      ...(body === undefined ? {} : { body: JSON.stringify(body) }),
    });
    assert.ok(res.ok, `${method} ${path}: ${res.status} ${await res.clone().text()}`);
    return res.json();
  };
  return { user_id: session.user_id, call };
}

/** Service worker registrations and versions as Chromium reports them over CDP. */
class ServiceWorkers {
  static async watch(cdp) {
    const w = new ServiceWorkers(cdp);
    await cdp.send("ServiceWorker.enable");
    return w;
  }

  constructor(cdp) {
    this.cdp = cdp;
    this.registrations = new Map();
    this.versions = new Map();
    this.wake = new Set();
    cdp.on("ServiceWorker.workerRegistrationUpdated", (e) => {
      for (const r of e.registrations) this.registrations.set(r.registrationId, r);
      this.wake.forEach((f) => f());
    });
    cdp.on("ServiceWorker.workerVersionUpdated", (e) => {
      for (const v of e.versions) this.versions.set(v.versionId, v);
      this.wake.forEach((f) => f());
    });
  }

  /** The id of the registration of `scopeURL` once a version of it is activated. */
  activated(scopeURL) {
    const find = () => {
      const reg = [...this.registrations.values()].find((r) => r.scopeURL === scopeURL && !r.isDeleted);
      const ok = reg && [...this.versions.values()].some((v) => v.registrationId === reg.registrationId && v.status === "activated");
      return ok ? reg.registrationId : undefined;
    };
    return new Promise((resolve, reject) => {
      const check = () => {
        const id = find();
        if (id === undefined) return;
        clearTimeout(timer);
        this.wake.delete(check);
        resolve(id);
      };
      const timer = setTimeout(() => {
        this.wake.delete(check);
        reject(new Error(`no activated service worker for ${scopeURL}: ${JSON.stringify([...this.registrations.values()])}`));
      }, WAIT);
      this.wake.add(check);
      check();
    });
  }
}

/** The push worker's notifications tagged `tag`, as data. */
function notifications(page, tag) {
  return page.evaluate(async (tag) => {
    const reg = await navigator.serviceWorker.getRegistration("/app/");
    const shown = reg ? await reg.getNotifications({ tag }) : [];
    return shown.map((n) => ({ title: n.title, body: n.body, tag: n.tag, data: n.data }));
  }, tag);
}

/** Waits until the push worker's notifications tagged `tag` are `expected` (`[]`: none). */
async function waitShown(page, tag, expected) {
  try {
    await page.waitForFunction(
      async ({ tag, want }) => {
        const reg = await navigator.serviceWorker.getRegistration("/app/");
        const shown = reg ? await reg.getNotifications({ tag }) : [];
        return JSON.stringify(shown.map((n) => ({ title: n.title, body: n.body, tag: n.tag, data: n.data }))) === want;
      },
      { tag, want: JSON.stringify(expected) },
      { timeout: WAIT },
    );
  } catch (err) {
    assert.deepEqual(await notifications(page, tag), expected);
    throw err;
  }
}

/** A `w`×`h` RGB PNG (a gradient), made here so the test needs no image files. */
function png(w, h) {
  const raw = Buffer.alloc((w * 3 + 1) * h);
  for (let y = 0; y < h; y++) {
    raw[y * (w * 3 + 1)] = 0;
    for (let x = 0; x < w; x++) {
      const at = y * (w * 3 + 1) + 1 + x * 3;
      raw[at] = (x * 255) / w;
      raw[at + 1] = (y * 255) / h;
      raw[at + 2] = 160;
    }
  }
  const chunk = (type, data) => {
    const len = Buffer.alloc(4);
    len.writeUInt32BE(data.length);
    const body = Buffer.concat([Buffer.from(type, "latin1"), data]);
    const crc = Buffer.alloc(4);
    crc.writeUInt32BE(crc32(body));
    return Buffer.concat([len, body, crc]);
  };
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(w, 0);
  ihdr.writeUInt32BE(h, 4);
  ihdr[8] = 8;
  ihdr[9] = 2;
  return Buffer.concat([Buffer.from([137, 80, 78, 71, 13, 10, 26, 10]), chunk("IHDR", ihdr), chunk("IDAT", deflateSync(raw)), chunk("IEND", Buffer.alloc(0))]);
}

function crc32(buf) {
  let c = ~0;
  for (const b of buf) {
    c ^= b;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0xedb88320 : c >>> 1;
  }
  return ~c >>> 0;
}

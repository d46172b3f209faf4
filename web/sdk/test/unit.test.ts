/**
 * The pure parts, without a server (the Rust SDK's unit tests, ported): gap detection,
 * the outbox's order and window, backoff bounds, and the events queue.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { backoffCeiling, backoffDelay } from "../src/backoff.js";
import { Emitter } from "../src/events.js";
import { Outbox, type OutboxItem } from "../src/outbox.js";
import { HELD_CAP, MAX_FILL, Timelines } from "../src/timeline.js";
import type { Ack, Entry } from "../src/types.js";

const C = 9;
const entry = (seq: number): Entry => ({ conversation: C, seq, id: `e${seq}`, sender: 1, ts: 0, kind: "message", body: `m${seq}` });
const seqs = (out: Entry[]): number[] => out.splice(0).map((e) => e.seq);

test("timeline: contiguous entries pass, duplicates drop", () => {
  const t = new Timelines(new Map([[C, 3]]));
  const out: Entry[] = [];
  for (const s of [2, 3, 4, 4, 5, 1, 5]) assert.equal(t.accept(entry(s), out), undefined);
  assert.deepEqual(seqs(out), [4, 5]);
  assert.deepEqual([...t.cursors()], [[C, 5]]);
});

test("timeline: the first entry of an unknown conversation starts it", () => {
  const t = new Timelines();
  const out: Entry[] = [];
  t.accept(entry(57), out);
  t.accept(entry(58), out);
  assert.deepEqual(seqs(out), [57, 58]);
});

test("timeline: a gap holds later entries until the fill arrives", () => {
  const t = new Timelines(new Map([[C, 2]]));
  const out: Entry[] = [];
  assert.deepEqual(t.accept(entry(6), out), { conversation: C, after: 2, limit: 3 });
  assert.equal(t.accept(entry(7), out), undefined, "no second fill while one is in flight");
  assert.equal(t.accept(entry(6), out), undefined);
  assert.deepEqual(out, []);
  assert.deepEqual([...t.cursors()], [[C, 2]], "the cursor waits for the gap");
  assert.equal(t.filled(C, [3, 4, 5, 6].map(entry), out), undefined, "the page may overlap what is held");
  assert.deepEqual(seqs(out), [3, 4, 5, 6, 7]);
  t.accept(entry(8), out);
  assert.deepEqual(seqs(out), [8]);
});

test("timeline: a short page asks for the rest; a huge gap is paged with held entries capped", () => {
  let t = new Timelines(new Map([[C, 0]]));
  const out: Entry[] = [];
  assert.deepEqual(t.accept(entry(5), out), { conversation: C, after: 0, limit: 4 });
  assert.deepEqual(t.filled(C, [entry(1), entry(2)], out), { conversation: C, after: 2, limit: 2 });
  assert.equal(t.filled(C, [entry(3), entry(4)], out), undefined);
  assert.deepEqual(seqs(out), [1, 2, 3, 4, 5]);

  t = new Timelines(new Map([[C, 0]]));
  const first = 2000;
  let fill = t.accept(entry(first), out);
  assert.deepEqual([fill?.after, fill?.limit], [0, MAX_FILL]);
  for (let s = first + 1; s <= first + 2 * HELD_CAP; s++) assert.equal(t.accept(entry(s), out), undefined);
  let nFills = 0;
  while (fill) {
    nFills += 1;
    const page = Array.from({ length: fill.limit }, (_, i) => entry(fill!.after + 1 + i));
    fill = t.filled(C, page, out);
  }
  assert.ok(nFills > 4, `paged: ${nFills} fills`);
  assert.deepEqual(seqs(out), Array.from({ length: first + 2 * HELD_CAP }, (_, i) => i + 1));
});

test("timeline: a gap the server cannot fill is skipped; a disconnect forgets held entries", () => {
  let t = new Timelines(new Map([[C, 2]]));
  const out: Entry[] = [];
  assert.ok(t.accept(entry(5), out));
  assert.equal(t.filled(C, [], out), undefined);
  assert.deepEqual(seqs(out), [5]);
  assert.ok(t.accept(entry(8), out));
  t.fillFailed(C, out);
  assert.deepEqual(seqs(out), [8]);

  t = new Timelines(new Map([[C, 1]]));
  assert.ok(t.accept(entry(4), out));
  t.disconnected();
  for (const s of [2, 3, 4]) assert.equal(t.accept(entry(s), out), undefined);
  assert.deepEqual(seqs(out), [2, 3, 4]);
});

const item = (id: string): OutboxItem => ({ client_msg_id: id, conversation: 1, entry: { kind: "message", body: id } });
const ack = (id: string, seq: number): Ack => ({ conversation: 1, seq, id: `e${seq}`, ts: 0, client_msg_id: id });
const sendAll = (o: Outbox, w: number): string[] => {
  const out: string[] = [];
  for (let i = o.nextToSend(w); i; i = o.nextToSend(w)) out.push(i.client_msg_id);
  return out;
};
const ids = (done: Array<[OutboxItem, Ack]>): string[] => done.map(([i]) => i.client_msg_id);

test("outbox: in order within the window, everything again after a drop", () => {
  const o = new Outbox([item("a"), item("b")]);
  o.push(item("c"));
  o.push(item("d"));
  assert.deepEqual(sendAll(o, 2), ["a", "b"]);
  assert.deepEqual(ids(o.acked(ack("a", 1))), ["a"]);
  assert.deepEqual(sendAll(o, 2), ["c"]);
  assert.deepEqual(ids(o.acked(ack("a", 1))), [], "a repeated ack");
  o.disconnected();
  assert.deepEqual(sendAll(o, 10), ["b", "c", "d"]);
});

test("outbox: acks are released in the written order; refusals and throttles keep it", () => {
  const o = new Outbox(["a", "b", "c", "d"].map(item));
  assert.deepEqual(sendAll(o, 3), ["a", "b", "c"]);
  assert.deepEqual(ids(o.acked(ack("c", 3))), [], "c waits for a and b");
  assert.deepEqual(ids(o.acked(ack("a", 1))), ["a"]);
  assert.deepEqual(sendAll(o, 3), ["d"]);
  const [refused, done] = o.refused("b");
  assert.deepEqual([refused?.client_msg_id, ids(done)], ["b", ["c"]]);
  assert.deepEqual(ids(o.acked(ack("d", 4))), ["d"]);
  assert.equal(o.length, 0);

  const t = new Outbox(["a", "b", "c", "d"].map(item));
  assert.deepEqual(sendAll(t, 5), ["a", "b", "c", "d"]);
  t.throttled("c");
  t.throttled("d");
  assert.deepEqual(ids(t.acked(ack("b", 2))), []);
  assert.deepEqual(sendAll(t, 5), ["c", "d"]);
  assert.deepEqual(ids(t.acked(ack("a", 1))), ["a", "b"]);
  assert.equal(t.popUnsent("c"), undefined, "only an unsent item can be taken back");
});

test("backoff: doubles to the max, jitter stays under the ceiling", () => {
  const b = { initialMs: 100, maxMs: 10_000, stableAfterMs: 10_000 };
  assert.deepEqual([0, 3, 7, 1000].map((n) => backoffCeiling(b, n)), [100, 800, 10_000, 10_000]);
  for (let n = 0; n < 40; n++) assert.ok(backoffDelay(b, n) <= backoffCeiling(b, n));
  assert.equal(backoffDelay({ ...b, initialMs: 0 }, 5), 0);
  assert.equal(backoffDelay(b, 2, () => 0.999999), 400);
});

test("events: handlers, iterators, connection states coalesced while queued, the cap", async () => {
  const errors: unknown[] = [];
  const em = new Emitter(4, (e) => errors.push(e));
  const got: string[] = [];
  const h = (e: { type: string }): void => void got.push(e.type);
  em.on("entry", h);
  em.on("*", () => {
    throw new Error("a bad handler");
  });
  const it = em.iterator();
  for (let i = 0; i < 5; i++) em.emit({ type: "connection", state: "connecting", attempt: i, transport: "ws" });
  em.emit({ type: "entry", entry: entry(1) });
  em.emit({ type: "entry", entry: entry(2) });
  em.emit({ type: "entry", entry: entry(3) });
  assert.equal(em.full(), true);
  const first = await it.next();
  assert.deepEqual(first.value, { type: "connection", state: "connecting", attempt: 4, transport: "ws" }, "only the latest state");
  em.off("entry", h);
  em.emit({ type: "entry", entry: entry(4) });
  assert.deepEqual(got, ["entry", "entry", "entry"]);
  assert.equal(errors.length, 9, "a throwing handler does not stop the others");
  const drained = em.whenDrained();
  await it.next();
  await it.next();
  await drained;
  em.end();
  const rest = [];
  for await (const e of it) rest.push(e.type === "entry" ? e.entry.seq : -1);
  assert.deepEqual(rest, [3, 4], "what was queued is still read after the end");
});

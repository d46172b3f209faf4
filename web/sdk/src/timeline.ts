/**
 * Gap detection: keeps each conversation a contiguous run of `seq` on its way to the app
 * (the Rust SDK's `timeline.rs`, line for line).
 *
 * Every entry the client reads (live, from a sync, from a gap fill) goes through
 * {@link Timelines.accept}. The next `seq` is handed on at once; an older one is a duplicate
 * and dropped; a later one means entries are missing: it is held, and the client is asked to
 * fetch the gap from history ({@link Fill}). When the page arrives ({@link Timelines.filled})
 * the gap's entries go out, then the held ones. Pure state, no I/O.
 */
import type { ConversationId, Entry, Seq } from "./types.js";

/**
 * Most entries held behind one gap. Later ones are not kept but remembered (`target`) and
 * fetched by the fill like the gap itself, so memory stays bounded whatever the server does.
 */
export const HELD_CAP = 1024;
/** Most entries one fill asks for (the server's default page cap). */
export const MAX_FILL = 500;

/** Fetch `conversation`'s entries after `after`, at most `limit` of them. */
export interface Fill {
  conversation: ConversationId;
  after: Seq;
  limit: number;
}

class Timeline {
  /** The last seq handed to the app; undefined until the first entry, which starts it. */
  cursor: Seq | undefined;
  /** Entries after a gap, waiting for it to be filled, by seq. */
  held = new Map<Seq, Entry>();
  /** The highest seq known to exist (held, or seen while `held` was full). */
  target: Seq = 0;
  /** A fill for this conversation is in flight. */
  filling = false;

  constructor(cursor?: Seq) {
    this.cursor = cursor;
    this.target = cursor ?? 0;
  }

  take(entry: Entry, out: Entry[]): void {
    const seq = entry.seq;
    const cursor = this.cursor;
    if (cursor !== undefined && seq <= cursor) return;
    if (cursor !== undefined && seq > cursor + 1) {
      this.target = Math.max(this.target, seq);
      if (this.held.size < HELD_CAP || this.held.has(seq)) this.held.set(seq, entry);
      return;
    }
    // The next one, or the first one ever seen: it starts the timeline.
    this.cursor = seq;
    this.target = Math.max(this.target, seq);
    out.push(entry);
    this.drain(out);
  }

  private firstHeld(): Seq | undefined {
    let first: Seq | undefined;
    for (const seq of this.held.keys()) if (first === undefined || seq < first) first = seq;
    return first;
  }

  /** Hands on held entries that have become next. */
  drain(out: Entry[]): void {
    if (this.cursor === undefined) return;
    let cursor = this.cursor;
    for (;;) {
      const first = this.firstHeld();
      if (first === undefined) break;
      if (first <= cursor) {
        this.held.delete(first);
      } else if (first === cursor + 1) {
        out.push(this.held.get(first) as Entry);
        this.held.delete(first);
        cursor = first;
      } else {
        break;
      }
    }
    this.cursor = cursor;
  }

  /** Whether entries are known to exist after the cursor that were not handed on. */
  gap(): boolean {
    return this.cursor !== undefined && this.cursor < this.target;
  }

  nextFill(conversation: ConversationId): Fill | undefined {
    if (this.filling || !this.gap() || this.cursor === undefined) return undefined;
    const first = this.firstHeld();
    // Up to just before the first held entry; with nothing held, up to the target.
    const upto = first === undefined ? this.target : first - 1;
    const limit = Math.min(Math.max(upto - this.cursor, 1), MAX_FILL);
    this.filling = true;
    return { conversation, after: this.cursor, limit };
  }

  skipGap(out: Entry[]): void {
    const first = this.firstHeld();
    if (first !== undefined) {
      this.cursor = first - 1;
      this.drain(out);
    } else {
      this.target = this.cursor ?? 0;
    }
  }
}

export class Timelines {
  private convs = new Map<ConversationId, Timeline>();

  /** Starts from stored cursors. */
  constructor(cursors: ReadonlyMap<ConversationId, Seq> = new Map()) {
    for (const [conv, seq] of cursors) this.convs.set(conv, new Timeline(seq));
  }

  /** The last seq handed to the app, per conversation (what a sync resumes from). */
  cursors(): Map<ConversationId, Seq> {
    const out = new Map<ConversationId, Seq>();
    for (const [conv, t] of this.convs) if (t.cursor !== undefined) out.set(conv, t.cursor);
    return out;
  }

  private get(conv: ConversationId): Timeline {
    let t = this.convs.get(conv);
    if (!t) {
      t = new Timeline();
      this.convs.set(conv, t);
    }
    return t;
  }

  /**
   * Takes one entry; pushes to `out` what may go to the app now, in order. Returns the fill
   * to request when this entry revealed a gap (and no fill is in flight).
   */
  accept(entry: Entry, out: Entry[]): Fill | undefined {
    const t = this.get(entry.conversation);
    t.take(entry, out);
    return t.nextFill(entry.conversation);
  }

  /**
   * A fill's page arrived: its entries go through, then whatever it unblocked. Returns the
   * next fill if a gap remains. A page that makes no progress means the server cannot supply
   * the gap: it is skipped rather than blocking the conversation forever.
   */
  filled(conv: ConversationId, entries: Entry[], out: Entry[]): Fill | undefined {
    const t = this.get(conv);
    t.filling = false;
    const before = t.cursor;
    for (const entry of entries) if (entry.conversation === conv) t.take(entry, out);
    if (t.cursor === before && t.gap()) t.skipGap(out);
    return t.nextFill(conv);
  }

  /** A fill was refused (for example the user left the conversation): the gap is skipped. */
  fillFailed(conv: ConversationId, out: Entry[]): void {
    const t = this.convs.get(conv);
    if (!t) return;
    t.filling = false;
    t.skipGap(out);
  }

  /**
   * The connection dropped: held entries and fills in flight are forgotten (the next sync
   * brings everything after the cursors again).
   */
  disconnected(): void {
    for (const t of this.convs.values()) {
      t.held.clear();
      t.filling = false;
      t.target = t.cursor ?? 0;
    }
  }

  /** Forgets everything (the stored state belonged to another user). */
  clear(): void {
    this.convs.clear();
  }
}

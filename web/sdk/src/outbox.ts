/**
 * The outbox: sends not yet acked, in the order the app wrote them, and which of them are on
 * the wire of the current connection (the Rust SDK's `outbox.rs`). Pure state; the client
 * saves it and writes the frames.
 *
 * Sends go out strictly in order, so the ones on the wire are always a prefix of the queue
 * (`nSent`). A reconnect marks everything unsent and the whole queue is written again: the
 * server answers a `client_msg_id` it already stored with the original ack.
 *
 * The server may answer one connection's sends out of order. Acks are released in the
 * written order: an ack that overtook an earlier send's is held on its item until everything
 * before it is answered.
 */
import type { Ack, ConversationId, NewEntry } from "./types.js";

/** One queued send. */
export interface OutboxItem {
  /** The idempotency key: a retry with it never stores a second entry. */
  client_msg_id: string;
  conversation: ConversationId;
  entry: NewEntry;
}

interface Slot {
  item: OutboxItem;
  /** Acked, waiting for the items before it. */
  ack: Ack | undefined;
}

export class Outbox {
  private slots: Slot[];
  /** The first `nSent` items were written on the current connection. */
  private nSent = 0;

  constructor(items: OutboxItem[] = []) {
    this.slots = items.map((item) => ({ item, ack: undefined }));
  }

  get length(): number {
    return this.slots.length;
  }

  items(): OutboxItem[] {
    return this.slots.map((s) => s.item);
  }

  push(item: OutboxItem): void {
    this.slots.push({ item, ack: undefined });
  }

  /** The next item to write if fewer than `window` await their ack; it counts as sent now. */
  nextToSend(window: number): OutboxItem | undefined {
    if (this.nSent >= Math.max(window, 1) || this.nSent >= this.slots.length) return undefined;
    this.nSent += 1;
    return this.slots[this.nSent - 1]?.item;
  }

  /**
   * Records an ack; returns the items (with their acks) now answered in the written order,
   * removed from the outbox. An unknown or repeated ack changes nothing.
   */
  acked(ack: Ack): Array<[OutboxItem, Ack]> {
    const id = ack.client_msg_id;
    if (id === undefined) return [];
    const slot = this.slots.find((s) => s.item.client_msg_id === id);
    if (slot && !slot.ack) slot.ack = ack;
    return this.release();
  }

  /** Removes a refused item; returns the acked items it was holding back. */
  refused(clientMsgId: string): [OutboxItem | undefined, Array<[OutboxItem, Ack]>] {
    const at = this.slots.findIndex((s) => s.item.client_msg_id === clientMsgId);
    if (at < 0) return [undefined, []];
    if (at < this.nSent) this.nSent -= 1;
    const [slot] = this.slots.splice(at, 1);
    return [slot?.item, this.release()];
  }

  private release(): Array<[OutboxItem, Ack]> {
    const done: Array<[OutboxItem, Ack]> = [];
    while (this.slots.length > 0 && this.slots[0]?.ack) {
      const slot = this.slots.shift() as Slot;
      this.nSent = Math.max(this.nSent - 1, 0);
      done.push([slot.item, slot.ack as Ack]);
    }
    return done;
  }

  /**
   * The server refused `clientMsgId` for now (rate limited): it and every item after it are
   * written again later, in order (those already stored are answered with their acks).
   */
  throttled(clientMsgId: string): void {
    const at = this.slots.findIndex((s) => s.item.client_msg_id === clientMsgId);
    if (at >= 0) this.nSent = Math.min(this.nSent, at);
  }

  /** Removes an item not yet written (its save failed, so the app was told it is not queued). */
  popUnsent(clientMsgId: string): OutboxItem | undefined {
    let at = -1;
    for (let i = this.slots.length - 1; i >= 0; i--) {
      if (this.slots[i]?.item.client_msg_id === clientMsgId) {
        at = i;
        break;
      }
    }
    if (at < 0 || at < this.nSent) return undefined;
    return this.slots.splice(at, 1)[0]?.item;
  }

  /** The connection dropped: nothing is on the wire any more. */
  disconnected(): void {
    this.nSent = 0;
  }

  /** Drops everything (the stored state belonged to another user). */
  clear(): OutboxItem[] {
    this.nSent = 0;
    return this.slots.splice(0).map((s) => s.item);
  }
}

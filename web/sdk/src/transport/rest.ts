/**
 * What the HTTP transports (SSE and long-poll) send over REST: appends
 * (`POST …/entries`, the same `client_msg_id` idempotency as the WebSocket), cursors
 * (`PUT …/cursors`), typing, and the stream session's presence and status
 * (`PUT /v1/streams/{session_id}/…`, the session named by `ready`).
 */
import type { Api } from "../api.js";
import { NatterError } from "../errors.js";
import type { OutboxItem } from "../outbox.js";
import type { Ack, ConversationId, EntryPage, HistoryRange, PresenceSubscribed, Seq, Status, UserId } from "../types.js";
import type { Ready } from "./conn.js";

export abstract class RestOps {
  abstract readonly ready: Ready;
  protected readonly api: Api;

  protected constructor(api: Api) {
    this.api = api;
  }

  private sessionId(): number {
    const id = this.ready.session_id;
    if (id === undefined) throw new NatterError("protocol", "the stream's ready named no session");
    return id;
  }

  async append(item: OutboxItem): Promise<Ack> {
    const ack = await this.api.postEntry(item.conversation, item.client_msg_id, item.entry);
    ack.client_msg_id ??= item.client_msg_id;
    return ack;
  }

  cursor(conversation: ConversationId, which: "delivered" | "read", seq: Seq): Promise<void> {
    return this.api.setCursors(conversation, which === "read" ? { read_seq: seq } : { delivered_seq: seq });
  }

  typing(conversation: ConversationId, typing: boolean): Promise<void> {
    return this.api.typing(conversation, typing);
  }

  subscribePresence(users: UserId[]): Promise<PresenceSubscribed> {
    return this.api.streamPresence(this.sessionId(), users);
  }

  setStatus(status: Status): Promise<void> {
    return this.api.streamStatus(this.sessionId(), status);
  }

  history(conversation: ConversationId, range: HistoryRange, limit?: number): Promise<EntryPage> {
    return this.api.history(conversation, range, limit);
  }
}

import type { ErrorBody, ErrorCode } from "./types.js";

/** Why an SDK call failed; switch on `kind`, and on `code` for `kind === "server"`. */
export type ErrorKind =
  /** The server refused the request (`code`, `body`). */
  | "server"
  /** The HTTP request could not be made or its answer not read (network, abort). */
  | "network"
  /** The server answered something this SDK does not understand. */
  | "protocol"
  /** The client is closed (queued sends stay in the store's outbox). */
  | "closed"
  /** The outbox holds `maxOutbox` sends already. */
  | "outbox_full"
  /** The send's frame would exceed `maxFrameBytes`: refused before it enters the outbox. */
  | "too_large"
  /** The state store failed to load or save. */
  | "store"
  /** The caller's AbortSignal fired. */
  | "aborted";

export class NatterError extends Error {
  readonly kind: ErrorKind;
  /** The server's error, when `kind === "server"`. */
  readonly body: ErrorBody | undefined;
  /** The HTTP status, when the error came from an HTTP answer. */
  readonly status: number | undefined;

  constructor(kind: ErrorKind, message: string, body?: ErrorBody, status?: number) {
    super(message);
    this.name = "NatterError";
    this.kind = kind;
    this.body = body;
    this.status = status;
  }

  /** The server's error code, when the server refused the request. */
  get code(): ErrorCode | undefined {
    return this.body?.code;
  }

  static server(body: ErrorBody, status?: number): NatterError {
    return new NatterError("server", `server refused the request: ${body.code}: ${body.message}`, body, status);
  }
}

/**
 * The Natter TypeScript SDK: REST ({@link Api}) and the live client ({@link Client}), with the
 * same names and guarantees as the Rust SDK (crates/client). See README.md.
 */
export { Api, UPLOAD_CHUNK } from "./api.js";
export type { FetchLike, FetchInitLike, FetchResponseLike, PollRequest, ResumableUploadOptions, UploadOptions, UploadSource } from "./api.js";
export { backoffCeiling, backoffDelay, defaultBackoff } from "./backoff.js";
export type { Backoff } from "./backoff.js";
export { Client } from "./client.js";
export type { ClientOptions, SendOptions } from "./client.js";
export { NatterError } from "./errors.js";
export type { ErrorKind } from "./errors.js";
export type { ClientEvent, CloseReason, ConnectionState, EventOf, EventType } from "./events.js";
export { Outbox } from "./outbox.js";
export type { OutboxItem } from "./outbox.js";
export { IndexedDbStore, MemoryStore } from "./store.js";
export type { IdbFactoryLike, Snapshot, StateStore } from "./store.js";
export { HELD_CAP, MAX_FILL, Timelines } from "./timeline.js";
export type { Fill } from "./timeline.js";
export type { TransportName } from "./transport/conn.js";
export type { EventSourceConstructor } from "./transport/sse.js";
export type { WebSocketConstructor } from "./transport/ws.js";
export { wsUrl } from "./transport/ws.js";
export * from "./types.js";

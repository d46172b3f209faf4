/**
 * What the SDK keeps between runs ({@link Snapshot}: whose state, cursors and outbox) and
 * where ({@link StateStore}): in memory ({@link MemoryStore}, the default) or, in browsers,
 * in IndexedDB ({@link IndexedDbStore}). The SDK saves a whole snapshot each time: outbox
 * additions at once (before the send goes on the wire), cursor moves and acks coalesced.
 * Saves never overlap: the next one starts after the previous one settled.
 */
import type { OutboxItem } from "./outbox.js";
import type { Cursors, UserId } from "./types.js";

/** The SDK's durable state (the same JSON as the Rust SDK's `Snapshot`). */
export interface Snapshot {
  /** Whose state this is. A snapshot of another user is discarded on connect. */
  user?: UserId;
  /** The last `seq` handed to the app, per conversation id. */
  cursors: Cursors;
  /** Sends not yet acked, in the order the app wrote them. */
  outbox: OutboxItem[];
}

export interface StateStore {
  /** The last saved snapshot, or undefined if nothing was ever saved. */
  load(): Promise<Snapshot | undefined>;
  /** Replaces the saved snapshot; once it resolves, a later `load` must see it. */
  save(snapshot: Snapshot): Promise<void>;
}

function copy(s: Snapshot): Snapshot {
  return JSON.parse(JSON.stringify(s)) as Snapshot;
}

/**
 * Keeps the state in memory: resumes across reconnects, and across client instances that
 * share the store (a "reload" within one process), not across process restarts.
 */
export class MemoryStore implements StateStore {
  private state: Snapshot | undefined;

  constructor(initial?: Snapshot) {
    this.state = initial ? copy(initial) : undefined;
  }

  load(): Promise<Snapshot | undefined> {
    return Promise.resolve(this.state ? copy(this.state) : undefined);
  }

  save(snapshot: Snapshot): Promise<void> {
    this.state = copy(snapshot);
    return Promise.resolve();
  }

  /** What was saved last (a copy). */
  snapshot(): Snapshot | undefined {
    return this.state ? copy(this.state) : undefined;
  }
}

// Minimal structural types for the parts of IndexedDB used here (no DOM types in the SDK).
interface IdbRequest<T> {
  result: T;
  error: unknown;
  onsuccess: (() => void) | null;
  onerror: (() => void) | null;
}
interface IdbOpenRequest extends IdbRequest<IdbDatabase> {
  onupgradeneeded: (() => void) | null;
  onblocked: (() => void) | null;
}
interface IdbTransaction {
  objectStore(name: string): IdbObjectStore;
  oncomplete: (() => void) | null;
  onerror: (() => void) | null;
  onabort: (() => void) | null;
  error: unknown;
}
interface IdbObjectStore {
  get(key: string): IdbRequest<unknown>;
  put(value: unknown, key: string): IdbRequest<unknown>;
}
interface IdbDatabase {
  objectStoreNames: { contains(name: string): boolean };
  createObjectStore(name: string): unknown;
  transaction(names: string, mode: "readonly" | "readwrite", options?: { durability?: string }): IdbTransaction;
  close(): void;
}
/** The parts of `indexedDB` (an `IDBFactory`) this store uses. */
export interface IdbFactoryLike {
  open(name: string, version?: number): IdbOpenRequest;
}

const OBJECT_STORE = "state";
const KEY = "snapshot";
const FORMAT_VERSION = 1;

/**
 * Keeps the state in IndexedDB, one database per key (use the user and device, e.g.
 * `${userId}:${deviceId}`, so that two accounts in one browser never share an outbox).
 * Saves use a `strict` durability transaction where the browser offers it.
 */
export class IndexedDbStore implements StateStore {
  readonly databaseName: string;
  private readonly factory: IdbFactoryLike;
  private db: Promise<IdbDatabase> | undefined;

  constructor(key: string, options: { prefix?: string; indexedDB?: IdbFactoryLike } = {}) {
    this.databaseName = `${options.prefix ?? "natter-sdk"}:${key}`;
    const factory = options.indexedDB ?? (globalThis as { indexedDB?: IdbFactoryLike }).indexedDB;
    if (!factory) throw new Error("IndexedDbStore: no indexedDB in this environment");
    this.factory = factory;
  }

  private open(): Promise<IdbDatabase> {
    this.db ??= new Promise<IdbDatabase>((resolve, reject) => {
      const req = this.factory.open(this.databaseName, 1);
      req.onupgradeneeded = () => {
        if (!req.result.objectStoreNames.contains(OBJECT_STORE)) req.result.createObjectStore(OBJECT_STORE);
      };
      req.onsuccess = () => resolve(req.result);
      req.onerror = () => reject(req.error);
      req.onblocked = () => reject(new Error("IndexedDbStore: the database is blocked by another tab"));
    });
    return this.db;
  }

  async load(): Promise<Snapshot | undefined> {
    const db = await this.open();
    const value = await new Promise<unknown>((resolve, reject) => {
      const req = db.transaction(OBJECT_STORE, "readonly").objectStore(OBJECT_STORE).get(KEY);
      req.onsuccess = () => resolve(req.result);
      req.onerror = () => reject(req.error);
    });
    if (value === undefined || value === null) return undefined;
    const file = value as { version?: number; snapshot?: Snapshot };
    if (file.version !== FORMAT_VERSION || !file.snapshot) {
      throw new Error(`IndexedDbStore: unsupported state version ${String(file.version)}`);
    }
    return file.snapshot;
  }

  async save(snapshot: Snapshot): Promise<void> {
    const db = await this.open();
    await new Promise<void>((resolve, reject) => {
      const tx = db.transaction(OBJECT_STORE, "readwrite", { durability: "strict" });
      tx.objectStore(OBJECT_STORE).put({ version: FORMAT_VERSION, snapshot: copy(snapshot) }, KEY);
      tx.oncomplete = () => resolve();
      tx.onerror = () => reject(tx.error);
      tx.onabort = () => reject(tx.error ?? new Error("IndexedDbStore: transaction aborted"));
    });
  }

  /** Closes the database connection (a later call opens it again). */
  async close(): Promise<void> {
    const db = this.db;
    this.db = undefined;
    if (db) (await db).close();
  }
}

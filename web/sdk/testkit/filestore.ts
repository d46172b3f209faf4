/**
 * A file-backed {@link StateStore} for Node tests (the SDK itself has no Node dependency):
 * each save writes a temporary file, then renames it over the old one.
 */
import { readFile, rename, writeFile } from "node:fs/promises";
import type { Snapshot, StateStore } from "../src/store.js";

export class FileStore implements StateStore {
  constructor(readonly path: string) {}

  async load(): Promise<Snapshot | undefined> {
    try {
      const file = JSON.parse(await readFile(this.path, "utf8")) as { version: number } & Snapshot;
      return { ...(file.user !== undefined ? { user: file.user } : {}), cursors: file.cursors, outbox: file.outbox };
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT") return undefined;
      throw err;
    }
  }

  async save(snapshot: Snapshot): Promise<void> {
    const tmp = `${this.path}.tmp`;
    await writeFile(tmp, JSON.stringify({ version: 1, ...snapshot }));
    await rename(tmp, this.path);
  }
}

/**
 * Media uploads: whole (`POST /v1/media`) and resumable (`POST/HEAD/PATCH /v1/media/uploads`)
 * through a proxy that cuts the connection in the middle of a PATCH; the SDK asks where the
 * upload stands (`HEAD`, `Upload-Offset`) and goes on from there, and the stored media's
 * sha256 is the file's. Then the upload is attached to a message and downloaded.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { afterEach, test } from "node:test";
import { Api, type FetchLike } from "../src/api.js";
import { NatterError } from "../src/errors.js";
import { TcpProxy } from "../testkit/proxies.js";
import { TestServer } from "../testkit/server.js";
import { account, connect, Recorder, closeClients } from "../testkit/util.js";

afterEach(closeClients);

function textFile(bytes: number): Uint8Array {
  const lines: string[] = [];
  let n = 0;
  for (let i = 0; n < bytes; i++) {
    const line = `line ${i}: the quick brown fox jumps over the lazy dog\n`;
    lines.push(line);
    n += line.length;
  }
  return new TextEncoder().encode(lines.join("")).subarray(0, bytes);
}

const sha256 = (b: Uint8Array): string => createHash("sha256").update(b).digest("hex");

test("a resumable upload cut mid-PATCH resumes from the server's offset; sha256 matches", async () => {
  const server = await TestServer.start();
  const proxy = await TcpProxy.start(server.addr);
  try {
    const alice = await account(server.url, "alice");
    const bob = await account(server.url, "bob");
    const conv = (await alice.api.createDirect(bob.id)).id;
    const methods: string[] = [];
    const counting: FetchLike = (url, init) => {
      methods.push(init?.method ?? "GET");
      return fetch(url, init as RequestInit);
    };
    const viaProxy = new Api(proxy.url, { token: alice.token, fetch: counting });

    const file = textFile(1_500_000);
    proxy.cutOnceAfter(700_000);
    const progress: number[] = [];
    const media = await viaProxy.uploadResumable(file, {
      contentType: "text/plain",
      name: "notes.txt",
      chunkBytes: 256 * 1024,
      onProgress: (sent, total) => {
        assert.equal(total, file.length);
        progress.push(sent);
      },
    });
    assert.equal(proxy.nCutMidway, 1, "the proxy cut the upload once");
    assert.ok(methods.includes("HEAD"), "the SDK asked where the upload stood");
    assert.equal(media.sha256, sha256(file));
    assert.equal(media.size, file.length);
    assert.equal(progress[progress.length - 1], file.length);
    assert.ok(progress.every((p, i) => i === 0 || p >= (progress[i - 1] ?? 0)), "progress never goes back");
    assert.equal((await alice.api.media(media.id)).sha256, sha256(file));

    // Attached to a message; bob downloads it from the URL signed for him.
    const a = await connect(server.url, alice.token);
    const b = await connect(server.url, bob.token);
    const br = new Recorder(b);
    await br.connected();
    const ack = await a.send(conv, "the notes", { attachments: [media] });
    const entry = await br.entry(conv, ack.seq);
    assert.ok(entry.kind === "message");
    const att = entry.attachments?.[0];
    assert.equal(att?.id, media.id);
    const downloaded = await bob.api.download(att?.url ?? "");
    assert.equal(sha256(downloaded), sha256(file));

    // A whole upload in one request.
    const small = textFile(10_000);
    const whole = await alice.api.upload(small, { contentType: "text/plain", name: "small.txt" });
    assert.equal(whole.sha256, sha256(small));

    // An aborted upload stops with `aborted`.
    const controller = new AbortController();
    await assert.rejects(
      alice.api.uploadResumable(file, {
        contentType: "text/plain",
        chunkBytes: 128 * 1024,
        signal: controller.signal,
        onProgress: (sent) => {
          if (sent > 0) controller.abort();
        },
      }),
      (e: unknown) => e instanceof NatterError && e.kind === "aborted",
    );
    await a.close();
    await b.close();
  } finally {
    await proxy.stop();
    await server.stop();
  }
});

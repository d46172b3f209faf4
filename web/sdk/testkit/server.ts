/**
 * A real Natter node per test: `natter serve --listen 127.0.0.1:0 --data-dir <fresh dir>`,
 * with rate limits off and receipts and presence that show quickly. It can be killed and
 * restarted on the same port and data directory. `NATTER_BIN` overrides the binary. Settings
 * that have no flag (push providers) go in a config file written to its data directory.
 */
import { type ChildProcess, execFile, spawn } from "node:child_process";
import { generateKeyPairSync } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

const REPO = fileURLToPath(new URL("../../../../", import.meta.url));
export const NATTER_BIN = process.env["NATTER_BIN"] ?? join(REPO, "target/debug/natter");

/** Settings for tests: no rate limits in the way, quick receipts, presence and shutdown. */
const TEST_FLAGS = [
  "--send-per-sec", "0",
  "--create-per-min", "0",
  "--cursor-per-sec", "0",
  "--typing-per-sec", "0",
  "--frames-per-sec", "0",
  "--media-uploads-per-min", "0",
  "--member-adds-per-min", "0",
  "--max-hashes-per-address", "256",
  "--max-connections-per-ip", "0",
  "--receipt-flush-ms", "20",
  "--presence-batch-ms", "50",
  "--presence-grace-ms", "100",
  "--drain-timeout-ms", "300",
];

export class TestServer {
  readonly dataDir: string;
  private child: ChildProcess | undefined;
  private exited: Promise<void> = Promise.resolve();
  private listen = "127.0.0.1:0";
  addr = "";
  private log: string[] = [];

  private constructor(private readonly extra: string[]) {
    this.dataDir = mkdtempSync(join(tmpdir(), "natter-sdk-test-"));
  }

  /** A node with `extra` flags, and `configToml` as its `--config` file. */
  static async start(extra: string[] = [], configToml?: string): Promise<TestServer> {
    const s = new TestServer([...extra]);
    if (configToml !== undefined) {
      const path = join(s.dataDir, "natter.toml");
      writeFileSync(path, configToml);
      s.extra.push("--config", path);
    }
    await s.spawn();
    return s;
  }

  get url(): string {
    return `http://${this.addr}`;
  }

  get port(): number {
    return Number(this.addr.split(":").pop());
  }

  private spawn(): Promise<void> {
    // A flag the test gives replaces the default one.
    const flags: string[] = [];
    for (let i = 0; i < TEST_FLAGS.length; i += 2) {
      const name = TEST_FLAGS[i] as string;
      if (!this.extra.includes(name)) flags.push(name, TEST_FLAGS[i + 1] as string);
    }
    const args = ["serve", "--listen", this.listen, "--data-dir", this.dataDir, ...flags, ...this.extra];
    const child = spawn(NATTER_BIN, args, { stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, NO_COLOR: "1" } });
    this.child = child;
    this.exited = new Promise((resolve) => child.once("exit", () => resolve()));
    return new Promise((resolve, reject) => {
      let buf = "";
      const timer = setTimeout(() => reject(new Error(`natter did not start: ${this.log.join("\n")}`)), 20_000);
      const onData = (chunk: Buffer): void => {
        buf += chunk.toString();
        let nl: number;
        while ((nl = buf.indexOf("\n")) >= 0) {
          const line = buf.slice(0, nl);
          buf = buf.slice(nl + 1);
          this.remember(line);
          const m = /natter listening on http:\/\/(\S+)/.exec(line);
          if (m?.[1]) {
            this.addr = m[1];
            this.listen = m[1];
            clearTimeout(timer);
            resolve();
          }
        }
      };
      child.stdout?.on("data", onData);
      child.stderr?.on("data", (chunk: Buffer) => chunk.toString().split("\n").forEach((l) => this.remember(l)));
      child.once("exit", (code) => {
        clearTimeout(timer);
        reject(new Error(`natter exited (${code}): ${this.log.join("\n")}`));
      });
      child.once("error", reject);
    });
  }

  private remember(line: string): void {
    if (!line) return;
    this.log.push(line);
    if (this.log.length > 50) this.log.shift();
  }

  /** The last lines the server printed (for failure messages). */
  recentLog(): string {
    return this.log.join("\n");
  }

  /** `natter admin grant HANDLE` on this node's data directory, as an operator would. */
  grantAdmin(handle: string): Promise<void> {
    return new Promise((resolve, reject) => {
      execFile(NATTER_BIN, ["admin", "grant", handle, "--data-dir", this.dataDir], (err, _out, stderr) => {
        if (err) reject(new Error(`natter admin grant ${handle}: ${stderr}`));
        else resolve();
      });
    });
  }

  /** Kills the process at once (SIGKILL): what is acked is on disk, nothing else is told. */
  async kill(): Promise<void> {
    this.child?.kill("SIGKILL");
    await this.exited;
    this.child = undefined;
  }

  /** Starts it again on the same address and data directory. */
  async restart(): Promise<void> {
    for (let i = 0; ; i++) {
      try {
        await this.spawn();
        return;
      } catch (err) {
        // The port may take a moment to be free again.
        if (i >= 20) throw err;
        await new Promise((r) => setTimeout(r, 100));
      }
    }
  }

  /** Stops it (SIGTERM, then SIGKILL) and removes its data directory. */
  async stop(): Promise<void> {
    if (this.child) {
      const child = this.child;
      child.kill("SIGTERM");
      const killer = setTimeout(() => child.kill("SIGKILL"), 3_000);
      await this.exited;
      clearTimeout(killer);
      this.child = undefined;
    }
    rmSync(this.dataDir, { recursive: true, force: true });
  }
}

/**
 * A `[push]` section: the webhook gateway at `webhookUrl`, and Web Push (`[push.webpush]`)
 * with a fresh VAPID key pair, its endpoints allowed on `webPushHosts` (default: the real push
 * services').
 */
export function pushToml(options: { webhookUrl?: string; webPush?: boolean; webPushHosts?: string[] }): string {
  const lines = ["[push]"];
  if (options.webhookUrl !== undefined) lines.push(`webhook_url = ${JSON.stringify(options.webhookUrl)}`);
  if (options.webPush) {
    const { publicKey, privateKey } = generateKeyPairSync("ec", { namedCurve: "prime256v1" });
    const pub = publicKey.export({ format: "jwk" });
    const point = Buffer.concat([Buffer.from([4]), Buffer.from(pub.x ?? "", "base64url"), Buffer.from(pub.y ?? "", "base64url")]);
    lines.push(
      "[push.webpush]",
      `vapid_public_key = ${JSON.stringify(point.toString("base64url"))}`,
      `vapid_private_key = ${JSON.stringify(privateKey.export({ format: "jwk" }).d ?? "")}`,
      `subject = "mailto:ops@natter.test"`,
    );
    if (options.webPushHosts) lines.push(`allowed_hosts = ${JSON.stringify(options.webPushHosts)}`);
  }
  return `${lines.join("\n")}\n`;
}

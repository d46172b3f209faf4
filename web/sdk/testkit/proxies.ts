/**
 * Userspace proxies for failure tests (this kernel has no `tc netem`):
 * - {@link TcpProxy}: bytes as they are; refuse (no target), cut every connection, or cut a
 *   connection once it has carried N bytes upstream (mid-upload).
 * - {@link WsRelay}: a WebSocket relay (`ws` server + client) that drops chosen server frames.
 * - {@link HttpProxy}: one request per connection (it adds `Connection: close`), so it can
 *   refuse WebSocket upgrades or `GET /v1/events` and end the open ones of either kind.
 */
import { createServer as createHttpServer, type Server as HttpServer } from "node:http";
import { createServer, type AddressInfo, connect, type Server, type Socket } from "node:net";
import WebSocket, { WebSocketServer } from "ws";
import type { ServerFrame } from "../src/types.js";

function listen(server: Server | HttpServer): Promise<number> {
  return new Promise((resolve) => server.listen(0, "127.0.0.1", () => resolve((server.address() as AddressInfo).port)));
}

function closeServer(server: Server | HttpServer): Promise<void> {
  return new Promise((resolve) => server.close(() => resolve()));
}

function parseTarget(target: string): { host: string; port: number } {
  const [host, port] = target.replace(/^https?:\/\//, "").split(":");
  return { host: host ?? "127.0.0.1", port: Number(port) };
}

export class TcpProxy {
  private readonly server: Server;
  private readonly open = new Set<Socket>();
  port = 0;
  nAccepted = 0;
  private target: string | undefined;
  private cutAfter: number | undefined;
  nCutMidway = 0;

  private constructor(target: string | undefined) {
    this.target = target;
    this.server = createServer((client) => this.accept(client));
  }

  /** A proxy to `target` (`host:port` or a base URL); undefined refuses every connection. */
  static async start(target: string | undefined): Promise<TcpProxy> {
    const p = new TcpProxy(target);
    p.port = await listen(p.server);
    return p;
  }

  get url(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  setTarget(target: string | undefined): void {
    this.target = target;
  }

  /** The next connection to carry more than `bytes` upstream is cut there (once). */
  cutOnceAfter(bytes: number): void {
    this.cutAfter = bytes;
  }

  /** Closes every open connection, both ways. */
  cut(): void {
    for (const s of this.open) s.destroy();
    this.open.clear();
  }

  private accept(client: Socket): void {
    this.nAccepted += 1;
    const target = this.target;
    if (!target) {
      client.destroy();
      return;
    }
    const { host, port } = parseTarget(target);
    const upstream = connect(port, host);
    client.setNoDelay(true);
    upstream.setNoDelay(true);
    this.open.add(client);
    this.open.add(upstream);
    let up = 0;
    client.on("data", (chunk: Buffer) => {
      up += chunk.length;
      if (this.cutAfter !== undefined && up > this.cutAfter) {
        this.cutAfter = undefined;
        this.nCutMidway += 1;
        client.destroy();
        upstream.destroy();
        return;
      }
      upstream.write(chunk);
    });
    upstream.on("data", (chunk: Buffer) => client.write(chunk));
    const end = (): void => {
      client.destroy();
      upstream.destroy();
      this.open.delete(client);
      this.open.delete(upstream);
    };
    for (const s of [client, upstream]) {
      s.on("error", end);
      s.on("close", end);
      s.on("end", end);
    }
  }

  async stop(): Promise<void> {
    this.cut();
    await closeServer(this.server);
  }
}

/** A WebSocket relay to a node that drops the server frames `drop` picks. */
export class WsRelay {
  private readonly http: HttpServer;
  private readonly wss: WebSocketServer;
  private readonly pairs = new Set<[WebSocket, WebSocket]>();
  port = 0;
  nDropped = 0;
  private drop: (frame: ServerFrame) => boolean = () => false;

  private constructor(private readonly target: string) {
    this.http = createHttpServer((_req, res) => {
      res.writeHead(404).end();
    });
    this.wss = new WebSocketServer({ server: this.http });
    this.wss.on("connection", (client, req) => this.relay(client, req.url ?? "/v1/ws"));
  }

  static async start(targetBaseUrl: string): Promise<WsRelay> {
    const r = new WsRelay(targetBaseUrl.replace(/^http/, "ws"));
    r.port = await listen(r.http);
    return r;
  }

  get url(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  dropFrames(pred: (frame: ServerFrame) => boolean): void {
    this.drop = pred;
  }

  private relay(client: WebSocket, path: string): void {
    const upstream = new WebSocket(`${this.target}${path}`);
    const pair: [WebSocket, WebSocket] = [client, upstream];
    this.pairs.add(pair);
    const early: string[] = [];
    client.on("message", (data, isBinary) => {
      const text = isBinary ? data : data.toString();
      if (upstream.readyState === WebSocket.OPEN) upstream.send(text);
      else early.push(String(text));
    });
    upstream.on("open", () => {
      for (const m of early.splice(0)) upstream.send(m);
    });
    upstream.on("message", (data) => {
      const text = data.toString();
      let frame: ServerFrame | undefined;
      try {
        frame = JSON.parse(text) as ServerFrame;
      } catch {
        frame = undefined;
      }
      if (frame && this.drop(frame)) {
        this.nDropped += 1;
        return;
      }
      if (client.readyState === WebSocket.OPEN) client.send(text);
    });
    const closeCode = (code: number): number => (code >= 3000 || code === 1000 || (code >= 1001 && code <= 1014 && code !== 1005 && code !== 1006) ? code : 1000);
    upstream.on("close", (code, reason) => {
      this.pairs.delete(pair);
      if (client.readyState === WebSocket.OPEN) client.close(closeCode(code), reason.toString());
      else client.terminate();
    });
    client.on("close", () => {
      this.pairs.delete(pair);
      if (upstream.readyState === WebSocket.OPEN) upstream.close(1000);
      else upstream.terminate();
    });
    upstream.on("error", () => client.terminate());
    client.on("error", () => upstream.terminate());
  }

  async stop(): Promise<void> {
    for (const [a, b] of this.pairs) {
      a.terminate();
      b.terminate();
    }
    this.wss.close();
    await closeServer(this.http);
  }
}

type Kind = "ws" | "sse" | "http";

/**
 * An HTTP/1.1 proxy that reads each connection's request head, so it can refuse WebSocket
 * upgrades and event streams (403), and end the open connections of either kind. Plain
 * requests get `Connection: close`, so that every request comes on a connection of its own.
 */
export class HttpProxy {
  private readonly server: Server;
  private readonly open = new Map<Socket, Kind>();
  port = 0;
  blockWs = false;
  blockSse = false;
  /** Refuses (403) the requests it returns true for, of any kind. */
  refuse: ((method: string, path: string, kind: Kind) => boolean) | undefined;
  readonly counts = { ws: 0, sse: 0, http: 0, refused: 0 };

  private constructor(private readonly target: string) {
    this.server = createServer((client) => this.accept(client));
  }

  static async start(targetBaseUrl: string): Promise<HttpProxy> {
    const p = new HttpProxy(targetBaseUrl);
    p.port = await listen(p.server);
    return p;
  }

  get url(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  /** Ends every open connection of `kind`. */
  end(kind: Kind): void {
    for (const [s, k] of this.open) {
      if (k === kind) {
        s.destroy();
        this.open.delete(s);
      }
    }
  }

  private accept(client: Socket): void {
    let buf = Buffer.alloc(0);
    const onData = (chunk: Buffer): void => {
      buf = Buffer.concat([buf, chunk]);
      const at = buf.indexOf("\r\n\r\n");
      if (at < 0) return;
      client.off("data", onData);
      client.pause();
      const head = buf.subarray(0, at).toString("latin1");
      const rest = buf.subarray(at + 4);
      this.forward(client, head, rest);
    };
    client.on("data", onData);
    client.on("error", () => client.destroy());
  }

  private forward(client: Socket, head: string, rest: Buffer): void {
    const [requestLine = "", ...headerLines] = head.split("\r\n");
    const path = requestLine.split(" ")[1] ?? "";
    const upgrade = headerLines.some((l) => /^upgrade:\s*websocket/i.test(l));
    const kind: Kind = upgrade ? "ws" : path.startsWith("/v1/events") ? "sse" : "http";
    const method = requestLine.split(" ")[0] ?? "";
    if ((kind === "ws" && this.blockWs) || (kind === "sse" && this.blockSse) || this.refuse?.(method, path, kind)) {
      this.counts.refused += 1;
      const body = JSON.stringify({ code: "forbidden", message: "blocked by the test proxy" });
      client.end(`HTTP/1.1 403 Forbidden\r\ncontent-type: application/json\r\ncontent-length: ${body.length}\r\nconnection: close\r\n\r\n${body}`);
      return;
    }
    this.counts[kind] += 1;
    const lines = kind === "ws" ? headerLines : [...headerLines.filter((l) => !/^connection:/i.test(l)), "Connection: close"];
    const { host, port } = parseTarget(this.target);
    const upstream = connect(port, host);
    this.open.set(client, kind);
    this.open.set(upstream, kind);
    upstream.write(Buffer.concat([Buffer.from([requestLine, ...lines].join("\r\n") + "\r\n\r\n", "latin1"), rest]));
    client.pipe(upstream);
    upstream.pipe(client);
    client.resume();
    const end = (): void => {
      client.destroy();
      upstream.destroy();
      this.open.delete(client);
      this.open.delete(upstream);
    };
    for (const s of [client, upstream]) {
      s.on("error", end);
      s.on("close", end);
    }
  }

  async stop(): Promise<void> {
    for (const s of this.open.keys()) s.destroy();
    this.open.clear();
    await closeServer(this.server);
  }
}

import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createServer, type AddressInfo } from "node:net";
import { Redis } from "ioredis";

/**
 * A Redis server owned by one test, on its own port and data directory, so
 * the test can stop, kill and restart it without touching the shared one.
 */
export class TestRedisServer {
  private proc: ChildProcess | undefined;
  readonly dir = mkdtempSync(join(tmpdir(), "spend-redis-"));

  constructor(
    readonly port: number,
    private readonly args: readonly string[] = ["--save", "", "--appendonly", "no"],
  ) {}

  get url(): string {
    return `redis://127.0.0.1:${this.port}`;
  }

  async start(): Promise<void> {
    const proc = spawn(
      "redis-server",
      ["--port", String(this.port), "--bind", "127.0.0.1", "--dir", this.dir, ...this.args],
      { stdio: ["ignore", "pipe", "pipe"] },
    );
    this.proc = proc;
    // Its log, so a server that will not start says why (a port taken, say).
    let log = "";
    const keep = (d: Buffer): void => {
      log = (log + d.toString()).slice(-2_000);
    };
    proc.stdout.on("data", keep);
    proc.stderr.on("data", keep);
    const deadline = Date.now() + 10_000;
    for (;;) {
      const r = new Redis({
        port: this.port,
        lazyConnect: true,
        maxRetriesPerRequest: 0,
        retryStrategy: () => null,
      });
      r.on("error", () => undefined);
      try {
        await r.connect();
        if ((await r.ping()) === "PONG") return;
      } catch {
        if (Date.now() > deadline || proc.exitCode !== null)
          throw new Error(
            `redis-server on port ${this.port} did not start (exit code ${String(proc.exitCode)}): ${log.trim().split("\n").slice(-3).join(" | ")}`,
          );
      } finally {
        r.disconnect();
      }
      await new Promise((res) => setTimeout(res, 50));
    }
  }

  /** Stops the server: SIGKILL for a crash, SIGTERM for a clean shutdown. */
  async stop(signal: NodeJS.Signals = "SIGKILL"): Promise<void> {
    const p = this.proc;
    if (p === undefined || p.exitCode !== null) return;
    await new Promise<void>((res) => {
      p.once("exit", () => res());
      p.kill(signal);
    });
    this.proc = undefined;
  }

  async destroy(): Promise<void> {
    await this.stop();
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/**
 * A port the OS says is free now: bound on port 0 and released. Another
 * process could take it before the caller binds it; TestRedisServer.start()
 * fails then with the server's own words, and such a race is rare on loopback.
 */
export async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", resolve);
  });
  const { port } = server.address() as AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

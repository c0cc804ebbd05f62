import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { mkdtempSync, writeFileSync } from "node:fs";
import { createServer, type Server } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { REPO_ROOT } from "./paths.js";
import { TEST_REDIS_URL } from "./redis.js";

/** The operators' CLI, run as operators run it: the package's bin (the build), in its own process. */

export const ROOT = REPO_ROOT;
export const BIN = join(ROOT, "dist/cli/main.js");
export const redisUrl = new URL(TEST_REDIS_URL);

/** The environment without the variables that would override a config file. */
export function cleanEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    LOG_LEVEL: "info",
    CLI_MASTER_KEY: "sk-cli-master-key",
  };
  delete env.REDIS_URL;
  delete env.REDIS_CLUSTER_NODES;
  delete env.DATABASE_URL;
  delete env.SPEND_CONFIG;
  delete env.METRICS_PORT;
  return { ...env, ...extra };
}

interface Result {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs the CLI without blocking, so independent runs overlap (each is mostly Node's start-up). */
export function runAsync(args: string[], env: Record<string, string> = {}): Promise<Result> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [BIN, ...args], {
      cwd: ROOT,
      env: cleanEnv(env),
      stdio: ["ignore", "pipe", "pipe"],
    });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
    child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => child.kill("SIGKILL"), 60_000);
    child.on("exit", (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

/** At most `limit` at a time, results in order. */
export async function pool<T, R>(
  items: readonly T[],
  limit: number,
  fn: (t: T) => Promise<R>,
): Promise<R[]> {
  const out: R[] = new Array<R>(items.length);
  let next = 0;
  await Promise.all(
    Array.from({ length: limit }, async () => {
      while (next < items.length) {
        const i = next++;
        out[i] = await fn(items[i] as T);
      }
    }),
  );
  return out;
}

export function run(
  args: string[],
  env: Record<string, string> = {},
): { code: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [BIN, ...args], {
    cwd: ROOT,
    env: cleanEnv(env),
    encoding: "utf8",
    timeout: 60_000,
  });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

/**
 * A refusal as the operator sees it: exit 2, exactly one line on stderr saying
 * `error: …`, and no stack frame.
 */
export function assertRefused(r: Result, message: RegExp, what: string): void {
  const detail = `${what}: exit ${r.code}\n${r.stderr}`;
  assert.equal(r.code, 2, detail);
  assert.match(r.stderr, /^error: [^\n]+\n$/, `${what}: one line on stderr\n${r.stderr}`);
  assert.doesNotMatch(r.stderr, /\n {4}at /, detail);
  assert.match(r.stderr, message, detail);
}

export function escapeRegExp(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}

/** Holds a TCP port, as another process would. */
export async function holdPort(): Promise<Server> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, "0.0.0.0", resolve));
  return server;
}

export const dir = mkdtempSync(join(tmpdir(), "spend-cli-"));
let n = 0;
export function configFile(yaml: string): string {
  const p = join(dir, `config-${n++}.yaml`);
  writeFileSync(p, yaml);
  return p;
}

export function goodConfig(prefix: string, databaseUrl: string): string {
  return configFile(`
general_settings:
  use_redis_transaction_buffer: true
  proxy_batch_write_at: 3600
  database_url: ${databaseUrl}
  master_key: os.environ/CLI_MASTER_KEY
litellm_settings:
  cache: true
  cache_params:
    type: redis
    host: ${redisUrl.hostname}
    port: ${redisUrl.port || "6379"}
spend_buffer_settings:
  key_prefix: ${prefix}
  flush_jitter_seconds: 0
  model_prices:
    mock-small: { input_cost_per_token: "0.0000025", output_cost_per_token: "0.00001" }
`);
}

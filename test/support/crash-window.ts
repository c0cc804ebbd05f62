import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createKey } from "../../src/gateway/virtual-keys.js";
import { decimalToPico, usdStringToPico } from "../../src/contract/money.js";
import { testConfig } from "./redis.js";
import { Harness } from "./harness.js";
import type { TestDatabase } from "./db.js";
import { spawnCli } from "./processes.js";

/**
 * How much traffic a gateway killed without warning (SIGKILL) loses: a real
 * gateway process (the CLI) serves chat requests for a while, is killed, a
 * flush drains what reached Redis, and the spend PostgreSQL holds is set
 * against the requests the clients saw answered. Shared by the test that
 * holds the default to its bound and the benchmark that reports it.
 */

export interface CrashWindowOptions {
  db: TestDatabase;
  prefix: string;
  redisUrl: string;
  /** proxy_batch_write_at, seconds; unset: the default. */
  intervalSeconds?: number;
  /** flush_jitter_seconds; unset: the default. */
  jitterSeconds?: number;
  /** How long traffic runs before the kill. */
  runMs: number;
  concurrency?: number;
}

export interface CrashWindow {
  /** Requests answered 200 before the kill, and the spend they were charged. */
  served: number;
  servedPico: bigint;
  /** What PostgreSQL holds for the key once everything that reached Redis is flushed. */
  committedPico: bigint;
  /** Seconds of answered traffic (by response time) before the kill whose spend is not in PostgreSQL. */
  lostSeconds: number;
  /** Answered requests whose spend is not in PostgreSQL (estimate: the lost spend over the mean cost). */
  lostRequests: number;
  elapsedMs: number;
}

const MODEL = "mock-crash";

export async function measureCrashWindow(o: CrashWindowOptions): Promise<CrashWindow> {
  const dir = mkdtempSync(join(tmpdir(), "spend-crash-"));
  const file = join(dir, "proxy_config.yaml");
  const general: string[] = [
    "  use_redis_transaction_buffer: true",
    "  master_key: sk-crash-master",
  ];
  if (o.intervalSeconds !== undefined) general.push(`  proxy_batch_write_at: ${o.intervalSeconds}`);
  const settings: string[] = [
    `  key_prefix: ${o.prefix}`,
    "  model_prices:",
    `    ${MODEL}: { input_cost_per_token: "0.0000011", output_cost_per_token: "0.0000033" }`,
  ];
  if (o.jitterSeconds !== undefined) settings.push(`  flush_jitter_seconds: ${o.jitterSeconds}`);
  writeFileSync(
    file,
    [
      "general_settings:",
      ...general,
      "litellm_settings:",
      "  cache: true",
      "  cache_params: { type: redis }",
      "spend_buffer_settings:",
      ...settings,
      "",
    ].join("\n"),
  );
  const key = await createKey(o.db.db, { userId: `crash-${o.prefix}` });
  const gw = spawnCli(["gateway", "--config", file, "--port", "0", "--host", "127.0.0.1"], {
    DATABASE_URL: o.db.url,
    REDIS_URL: o.redisUrl,
    LOG_LEVEL: "info",
  });
  const listening = await gw.waitForEvent((e) => e.msg === "gateway listening", 30_000);
  const url = `http://127.0.0.1:${String(listening.port)}/v1/chat/completions`;

  // Answered requests in the order their answers came, with their cost.
  const answered: { at: number; pico: bigint }[] = [];
  const started = Date.now();
  let stop = false;
  const client = async (c: number): Promise<void> => {
    for (let i = 0; !stop; i++) {
      try {
        const res = await fetch(url, {
          method: "POST",
          headers: { authorization: `Bearer ${key.key}`, "content-type": "application/json" },
          body: JSON.stringify({
            model: MODEL,
            messages: [{ role: "user", content: `request ${c}.${i} ${"word ".repeat(i % 7)}` }],
          }),
        });
        const cost = res.headers.get("x-litellm-response-cost");
        await res.arrayBuffer();
        if (res.status === 200 && cost !== null && !stop)
          answered.push({ at: Date.now(), pico: usdStringToPico(cost) });
      } catch {
        return; // the gateway is gone
      }
    }
  };
  const clients = Array.from({ length: o.concurrency ?? 8 }, (_, c) => client(c));
  await new Promise((r) => setTimeout(r, o.runMs));
  stop = true;
  const killedAt = Date.now();
  gw.kill("SIGKILL");
  await Promise.all(clients);
  await gw.done;

  // Drain what reached Redis (the worker's part of the pipeline, by hand).
  const h = new Harness(testConfig(o.prefix, o.db.url), o.db.db);
  try {
    for (let i = 0; i < 100 && (await h.waitingJobs()) > 0; i++) await h.flusher().flushOnce();
  } finally {
    await h.close();
  }
  const row = await o.db.db.verificationToken.findUniqueOrThrow({ where: { token: key.token } });
  const committedPico = decimalToPico(row.spend.toFixed(12));

  let servedPico = 0n;
  for (const a of answered) servedPico += a.pico;
  // The newest answer whose spend, with everything answered before it, PostgreSQL holds.
  let cumulative = 0n;
  let safeUntil = started;
  for (const a of answered) {
    cumulative += a.pico;
    if (cumulative > committedPico) break;
    safeUntil = a.at;
  }
  const lost = servedPico > committedPico ? servedPico - committedPico : 0n;
  const mean = answered.length > 0 ? Number(servedPico) / answered.length : 1;
  return {
    served: answered.length,
    servedPico,
    committedPico,
    lostSeconds: lost === 0n ? 0 : Math.max(0, (killedAt - safeUntil) / 1000),
    lostRequests: Math.round(Number(lost) / mean),
    elapsedMs: killedAt - started,
  };
}

import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { Redis } from "ioredis";
import { parse, stringify } from "yaml";
import { redisKeys } from "../../src/redis/keys.js";
import { BIN, cleanEnv, configFile, redisUrl, ROOT } from "../support/cli.js";
import { createTestDatabase, type TestDatabase } from "../support/db.js";
import { freePort } from "../support/redis-server.js";
import { cleanRedis, TEST_REDIS_URL, uniquePrefix } from "../support/redis.js";
import { waitFor } from "../support/wait.js";

const MASTER_KEY = "sk-prometheus-e2e-master";

interface Alert {
  labels: Record<string, string>;
  state: "pending" | "firing";
}

/** A process of the CLI as deployed (the build), its output kept for failure messages. */
function startCli(args: string[]): { child: ChildProcess; output: () => string } {
  const child = spawn(process.execPath, [BIN, ...args], {
    cwd: ROOT,
    env: cleanEnv({ CLI_MASTER_KEY: MASTER_KEY }),
    stdio: ["ignore", "pipe", "pipe"],
  });
  let out = "";
  child.stdout?.on("data", (d: Buffer) => (out += d.toString()));
  child.stderr?.on("data", (d: Buffer) => (out += d.toString()));
  return { child, output: () => out };
}

/**
 * A real Prometheus (Debian's binary) scraping a real gateway and worker, and
 * evaluating deploy/prometheus/alerts.yml as shipped. The worker is killed
 * while traffic flows: the gateways alone must then carry the series the
 * worker-down and backlog alerts need, and the alerts must go active.
 *
 * Prometheus has no fast clock, so two things are scaled for a test that
 * takes seconds, not minutes: scrapes and rule evaluations run every
 * second, and the outage's age is written into Redis (the oldest waiting
 * job's timestamp and the last successful flush, both five minutes back),
 * the state a five-minute outage leaves. The alerts are then asserted
 * active (pending or firing): their `for` clauses are Prometheus's own
 * timing, tested by `promtool test rules` (test/unit/prometheus-rules.test.ts).
 */
describe("Prometheus end to end: the shipped alert rules on real scrapes", () => {
  let t: TestDatabase;
  const prefix = uniquePrefix("prom-e2e");
  const keys = redisKeys(prefix);
  const dir = mkdtempSync(join(tmpdir(), "prom-e2e-"));
  const procs: ChildProcess[] = [];
  let promPort = 0;
  let redis: Redis;

  before(async () => {
    t = await createTestDatabase("prometheus_e2e");
    redis = new Redis(TEST_REDIS_URL);
  });
  after(async () => {
    for (const p of procs) p.kill("SIGKILL");
    redis.disconnect();
    await cleanRedis(prefix);
    await t.drop();
    rmSync(dir, { recursive: true, force: true });
  });

  const query = async (q: string): Promise<number[]> => {
    const res = await fetch(
      `http://127.0.0.1:${promPort}/api/v1/query?query=${encodeURIComponent(q)}`,
    ).catch(() => undefined);
    // Not listening yet, or listening and still starting (503, plain text): no result.
    if (res === undefined || !res.ok) return [];
    const body = (await res.json()) as {
      data?: { result: { value: [number, string] }[] };
    };
    return (body.data?.result ?? []).map((r) => Number(r.value[1]));
  };
  const alerts = async (): Promise<Alert[]> => {
    const res = await fetch(`http://127.0.0.1:${promPort}/api/v1/alerts`);
    return ((await res.json()) as { data: { alerts: Alert[] } }).data.alerts;
  };
  const active = async (): Promise<Set<string>> =>
    new Set((await alerts()).map((a) => a.labels.alertname ?? ""));

  it("alerts stay quiet while the worker runs, and the worker-down and backlog alerts go active when it dies", async () => {
    const [gatewayPort, workerPort] = [await freePort(), await freePort()];
    promPort = await freePort();
    const config = configFile(`
general_settings:
  use_redis_transaction_buffer: true
  proxy_batch_write_at: 0.2
  database_url: ${t.url}
  master_key: os.environ/CLI_MASTER_KEY
litellm_settings:
  cache: true
  cache_params: { type: redis, host: ${redisUrl.hostname}, port: ${redisUrl.port || "6379"} }
spend_buffer_settings:
  key_prefix: ${prefix}
  flush_jitter_seconds: 0
  worker_flush_every_seconds: 0.5
`);
    const worker = startCli(["worker", "--config", config, "--port", String(workerPort)]);
    const gateway = startCli([
      ...["gateway", "--config", config, "--port", String(gatewayPort)],
      ...["--host", "127.0.0.1"],
    ]);
    procs.push(worker.child, gateway.child);

    // The shipped Prometheus configuration, with its job names and rule file;
    // only discovery (static targets instead of DNS) and the intervals differ.
    const shipped = parse(readFileSync(join(ROOT, "deploy/prometheus/prometheus.yml"), "utf8")) as {
      rule_files: string[];
      scrape_configs: { job_name: string }[];
    };
    const targets: Record<string, string> = {
      "flush-worker": `127.0.0.1:${workerPort}`,
      gateway: `127.0.0.1:${gatewayPort}`,
    };
    assert.deepEqual(
      shipped.scrape_configs.map((s) => s.job_name).sort(),
      Object.keys(targets).sort(),
    );
    const promConfig = join(dir, "prometheus.yml");
    writeFileSync(
      promConfig,
      stringify({
        global: { scrape_interval: "1s", evaluation_interval: "1s" },
        rule_files: shipped.rule_files.map((f) => join(ROOT, "deploy/prometheus", f)),
        scrape_configs: shipped.scrape_configs.map((s) => ({
          ...s,
          dns_sd_configs: undefined,
          static_configs: [{ targets: [targets[s.job_name]] }],
        })),
      }),
    );
    const prom = spawn(
      "prometheus",
      [
        `--config.file=${promConfig}`,
        `--storage.tsdb.path=${join(dir, "data")}`,
        `--web.listen-address=127.0.0.1:${promPort}`,
      ],
      { stdio: ["ignore", "ignore", "pipe"] },
    );
    procs.push(prom);
    let promLog = "";
    prom.stderr.on("data", (d: Buffer) => (promLog += d.toString()));
    const context = (): string =>
      `\n--- prometheus:\n${promLog.slice(-2000)}\n--- worker:\n${worker
        .output()
        .slice(-1500)}\n--- gateway:\n${gateway.output().slice(-1500)}`;

    // Traffic throughout: spend events through the gateway, as a gateway in
    // another language sends them.
    let sent = 0;
    let stop = false;
    const traffic = (async () => {
      while (!stop) {
        const res = await fetch(`http://127.0.0.1:${gatewayPort}/spend/events`, {
          method: "POST",
          headers: { "content-type": "application/json", authorization: `Bearer ${MASTER_KEY}` },
          body: JSON.stringify({
            events: [{ spend: "0.001", userId: `u-${sent % 5}`, model: "m", tags: ["e2e"] }],
          }),
        }).catch(() => undefined);
        if (res?.status === 200) sent++;
        await new Promise((r) => setTimeout(r, 50));
      }
    })();

    try {
      await waitFor(
        "both targets up in Prometheus",
        async () => (await query('sum(up{job=~"flush-worker|gateway"})'))[0] === 2,
        30_000,
        250,
        context,
      );
      await waitFor(
        "Prometheus to see one leader and a fresh flush",
        async () =>
          (await query("sum(litellm_pod_lock_manager_size)"))[0] === 1 &&
          ((await query("min(spend_seconds_since_last_successful_flush)"))[0] ?? 99) < 5,
        30_000,
        250,
        context,
      );
      assert.ok(sent > 0, "the gateway accepted spend");
      // Healthy: none of the outage alerts is active (a few evaluations in).
      await new Promise((r) => setTimeout(r, 2_000));
      const quiet = await active();
      for (const name of [
        "SpendFlushWorkerDown",
        "SpendNoSuccessfulFlush",
        "SpendBacklogAgeHigh",
        "SpendFlushLeaderless",
        "SpendFlushLeaders",
      ])
        assert.ok(!quiet.has(name), `${name} active while healthy: ${[...quiet].join(", ")}`);

      // The worker dies; the gateway keeps taking spend, which piles up in Redis.
      worker.child.kill("SIGKILL");
      await waitFor(
        "spend to pile up, seen through the gateway alone",
        async () =>
          ((await query('max(litellm_redis_spend_update_queue_size{job="gateway"})'))[0] ?? 0) > 0,
        30_000,
        250,
        context,
      );
      // The state five minutes of this outage leave (see the comment above).
      const fiveMinutesAgo = Date.now() - 5 * 60_000;
      // The oldest entity job not committed: waiting, or taken by the worker that died.
      const list = async (state: string): Promise<string | undefined> =>
        (await redis.lrange(`${keys.bullPrefix}:${keys.spendQueue}:${state}`, -1, -1))[0];
      // (Prometheus may have read the queue size before the kill: wait for a job sent after it.)
      let oldest: string | undefined;
      await waitFor(
        "an entity job not committed",
        async () => (oldest = (await list("wait")) ?? (await list("active"))) !== undefined,
        10_000,
        50,
        context,
      );
      assert.ok(oldest !== undefined);
      await redis.hset(
        `${keys.bullPrefix}:${keys.spendQueue}:${oldest}`,
        "timestamp",
        fiveMinutesAgo,
      );
      await redis.set(keys.flushLastSuccess, String(fiveMinutesAgo));

      const want = ["SpendFlushWorkerDown", "SpendNoSuccessfulFlush", "SpendBacklogAgeHigh"];
      await waitFor(
        `${want.join(", ")} to go active`,
        async () => {
          const now = await active();
          return want.every((a) => now.has(a));
        },
        30_000,
        250,
        async () => `active: ${JSON.stringify(await alerts())}${context()}`,
      );
      const backlog = (await alerts()).filter((a) => a.labels.alertname === "SpendBacklogAgeHigh");
      assert.deepEqual(
        backlog.map((a) => a.labels.queue),
        ["entity"],
        "labelled with the queue whose oldest job is old",
      );
    } finally {
      stop = true;
      await traffic;
      gateway.child.kill("SIGTERM");
      prom.kill("SIGTERM");
    }
  });
});

import assert from "node:assert/strict";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { buildConfig, type AppConfig } from "../../src/config/config.js";
import { startGateway, type GatewayService } from "../../src/gateway/gateway.js";
import type { SpendEvent } from "../../src/produce/spend-event.js";
import { diffTotals, readTotals } from "../support/db-totals.js";
import { createTestDatabase, type TestDatabase } from "../support/db.js";
import { Harness } from "../support/harness.js";
import { Ledger } from "../support/ledger.js";
import { spawnCli } from "../support/processes.js";
import { idempotentProducerId, sha256Hex } from "../../src/gateway/idempotency.js";
import { redisKeys } from "../../src/redis/keys.js";
import { cleanRedis, TEST_REDIS_URL, uniquePrefix } from "../support/redis.js";

/**
 * A real gateway process killed (SIGKILL) at chosen moments while it handles
 * an idempotent batch of 1,000 events: before it claims the key, between the
 * claim and the queues, part way through sending, after. The client then
 * retries the same batch with the same key on another gateway until it is
 * answered 200. Whatever the moment, PostgreSQL must hold every batch
 * exactly once.
 */

const MASTER = "sk-idempotent-crash-master";

describe("idempotent ingest: a gateway killed mid-request", () => {
  let t: TestDatabase;
  let config: AppConfig;
  let survivor: GatewayService;
  let file: string;
  const prefix = uniquePrefix("idemcrash");
  const ledger = new Ledger();

  before(async () => {
    t = await createTestDatabase("idempotent_crash");
    const settings = {
      key_prefix: prefix,
      flush_jitter_seconds: 0,
      max_rows_per_job: 50,
      ingest_idempotency_lease_seconds: 1,
    };
    config = buildConfig(
      {
        general_settings: {
          use_redis_transaction_buffer: true,
          proxy_batch_write_at: 3_600,
          master_key: MASTER,
        },
        litellm_settings: { cache: true, cache_params: { type: "redis" } },
        spend_buffer_settings: settings,
      },
      { REDIS_URL: TEST_REDIS_URL, DATABASE_URL: t.url },
    );
    file = join(mkdtempSync(join(tmpdir(), "spend-idem-crash-")), "proxy_config.yaml");
    writeFileSync(
      file,
      [
        "general_settings:",
        "  use_redis_transaction_buffer: true",
        "  proxy_batch_write_at: 3600",
        `  master_key: ${MASTER}`,
        "litellm_settings:",
        "  cache: true",
        "  cache_params: { type: redis }",
        "spend_buffer_settings:",
        ...Object.entries(settings).map(([k, v]) => `  ${k}: ${v}`),
        "",
      ].join("\n"),
    );
    survivor = await startGateway(config, { port: 0, host: "127.0.0.1" });
  });
  after(async () => {
    await survivor.close();
    await cleanRedis(prefix);
    await t.drop();
  });

  const send = (base: string, key: string, events: readonly SpendEvent[]): Promise<Response> =>
    fetch(`${base}/spend/events`, {
      method: "POST",
      headers: {
        authorization: `Bearer ${MASTER}`,
        "content-type": "application/json",
        "idempotency-key": key,
      },
      body: JSON.stringify({ events }),
    });

  it("applies each batch exactly once whenever the gateway handling it dies", async () => {
    const outcomes: string[] = [];
    const h = new Harness(config, t.db);
    // When to kill: after a delay, or as soon as Redis shows the claim, or the first job.
    const moments: (number | "claim" | "first job")[] = [
      0,
      10,
      "claim",
      "claim",
      "first job",
      "first job",
      60,
    ];
    for (const [i, moment] of moments.entries()) {
      const events: SpendEvent[] = Array.from({ length: 1_000 }, (_, j) => ({
        spend: `0.000${(j % 9) + 1}`,
        apiKey: `crash-key-${i}`,
        userId: `crash-user-${j % 40}`,
        teamId: `crash-team-${j % 7}`,
        tags: [`crash-tag-${j % 13}`],
        model: "gpt-4o",
        promptTokens: j,
        completionTokens: 1,
      }));
      const key = `crash-batch-${i}`;
      const gw = spawnCli(["gateway", "--config", file, "--port", "0", "--host", "127.0.0.1"], {
        DATABASE_URL: t.url,
        REDIS_URL: TEST_REDIS_URL,
        LOG_LEVEL: "info",
      });
      const listening = await gw.waitForEvent((e) => e.msg === "gateway listening", 30_000);
      const first = send(`http://127.0.0.1:${String(listening.port)}`, key, events).then(
        (r) => r.status,
        () => "connection lost",
      );
      if (typeof moment === "number") await new Promise((r) => setTimeout(r, moment));
      else {
        const hash = sha256Hex(key);
        const seen = async (): Promise<boolean> =>
          moment === "claim"
            ? (await h.redis.exists(redisKeys(prefix).idempotencyClaim(hash))) === 1
            : (await h.queues.entity.getJob(`${idempotentProducerId(hash)}.1`)) !== undefined;
        const until = Date.now() + 10_000;
        while (!(await seen()) && Date.now() < until) await new Promise((r) => setImmediate(r));
      }
      gw.kill("SIGKILL");
      await gw.done;
      const firstOutcome = await first;
      // The client retries on another gateway until it has an answer.
      let answer: Record<string, unknown>;
      const deadline = Date.now() + 15_000;
      for (;;) {
        const r = await send(`http://127.0.0.1:${survivor.port}`, key, events);
        answer = (await r.json()) as Record<string, unknown>;
        if (r.status === 200) break;
        assert.equal(r.status, 409, JSON.stringify(answer));
        assert.ok(Date.now() < deadline, "the lease of the dead attempt ran out");
        await new Promise((res) => setTimeout(res, 200));
      }
      assert.equal(answer.accepted, 1_000);
      outcomes.push(
        `${typeof moment === "number" ? `${moment} ms` : moment}: first ${String(firstOutcome)}, retry replayed=${String(answer.replayed)}`,
      );
      for (const e of events) ledger.record(e);
    }
    // Which paths the retries took (recorded: the dead one never claimed; resumed: it had).
    const retries = (await survivor.producer.metrics.registry.getMetricsAsJSON()).find(
      (m) => m.name === "gateway_idempotent_ingest_total",
    );
    const paths = (retries?.values ?? []).map((v) => `${String(v.labels.outcome)}=${v.value}`);
    process.stdout.write(`# ${outcomes.join("; ")}\n# retries: ${paths.join(", ")}\n`);
    const resumed = retries?.values.find((v) => v.labels.outcome === "resumed")?.value ?? 0;
    assert.ok(resumed >= 1, "a kill between the claim and the queues was resumed by a retry");

    try {
      for (let i = 0; i < 200 && (await h.waitingJobs()) > 0; i++) await h.flusher().flushOnce();
      assert.equal(await h.waitingJobs(), 0);
    } finally {
      await h.close();
    }
    const diff = diffTotals(ledger.totals, await readTotals(t.url));
    assert.deepEqual(diff, [], diff.join("\n"));
  });
});

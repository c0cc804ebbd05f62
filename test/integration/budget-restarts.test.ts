import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { Redis } from "ioredis";
import { setBudget } from "../../src/budget/budget-store.js";
import { buildConfig, type AppConfig } from "../../src/config/config.js";
import { decimalToPico, picoToDecimal, usdStringToPico } from "../../src/contract/money.js";
import { startGateway, type GatewayService } from "../../src/gateway/gateway.js";
import { createKey, type CreatedKey } from "../../src/gateway/virtual-keys.js";
import { startFlushWorker, type FlushWorkerService } from "../../src/index.js";
import { budgetKey, redisKeys } from "../../src/redis/keys.js";
import { openSpendQueues } from "../../src/queue/spend-queues.js";
import { createTestDatabase, type TestDatabase } from "../support/db.js";
import { freePort, TestRedisServer } from "../support/redis-server.js";
import { uniquePrefix } from "../support/redis.js";
import { waitFor } from "../support/wait.js";

/**
 * Budgets across the two events that make a fleet count spend again: a cold
 * start (every gateway seeding at once from spend already committed) and a
 * Redis restarted empty (every lease and seed gone while gateways hold
 * slices of the old seeding). Neither may count spend twice (refusing
 * before the budget is spent) or release more than remains (the committed
 * spend past the budget stays within the stated bound). A Redis of the
 * test's own, so it can be killed.
 */

const MASTER = "sk-master-budget-restarts";
/** 4 words in, 4 out: 4 × 0.0000001 + 4 × 0.0000003. */
const C = usdStringToPico("0.0000016");
const N = 2;
/** The budget, in requests; slices are budget_lease_fraction (0.1) of it. */
const BUDGET = 40n;
const SLICE = BUDGET / 10n;

describe("budgets across a cold start and a Redis restart", () => {
  let t: TestDatabase;
  let server: TestRedisServer;
  let config: AppConfig;
  let worker: FlushWorkerService;
  let admin: Redis;
  const gateways: GatewayService[] = [];
  const prefix = uniquePrefix("budget-restart");

  const chat = async (i: number, key: CreatedKey): Promise<[number, string | undefined]> => {
    const res = await fetch(`http://127.0.0.1:${gateways[i]?.port ?? 0}/v1/chat/completions`, {
      method: "POST",
      headers: { authorization: `Bearer ${key.key}`, "content-type": "application/json" },
      body: JSON.stringify({
        model: "mock-small",
        messages: [{ role: "user", content: "a b c d" }],
      }),
    });
    const body = (await res.json()) as { error?: { code?: string } };
    return [res.status, body.error?.code];
  };

  /** Alternates gateways until each has refused twice in a row; the requests served. */
  const spendUntilRefused = async (key: CreatedKey, limit = 1_000): Promise<number> => {
    let served = 0;
    const refusals = Array.from({ length: N }, () => 0);
    for (let n = 0; n < limit * 4 && refusals.some((r) => r < 2); n++) {
      const g = n % N;
      if ((refusals[g] ?? 0) >= 2) continue;
      const [status, code] = await chat(g, key);
      if (status === 200) {
        served++;
        refusals[g] = 0;
        if (served > limit) assert.fail(`never refused (${served} served)`);
      } else if (status === 400 && code === "budget_exceeded") refusals[g] = (refusals[g] ?? 0) + 1;
      // budget_pending (a lease on its way), or the moment Redis is back and a gateway is not yet.
      else if (status === 503) await new Promise((r) => setTimeout(r, 10));
      else assert.fail(`answered ${status} ${code ?? ""}`);
    }
    return served;
  };

  /** Everything sent has been flushed: the key's committed spend, picodollars. */
  const committed = async (key: CreatedKey, expectPico?: bigint): Promise<bigint> => {
    const queues = openSpendQueues(admin, redisKeys(prefix));
    let spend = 0n;
    try {
      await waitFor(
        "spend to be committed",
        async () => {
          const counts = await Promise.all([
            queues.entity.getJobCounts("wait", "active", "delayed"),
            queues.daily.getJobCounts("wait", "active", "delayed"),
          ]);
          if (counts.some((c) => Object.values(c).some((v) => v > 0))) return false;
          const row = await t.db.verificationToken.findUnique({ where: { token: key.token } });
          spend = decimalToPico(row?.spend.toFixed(12) ?? "0");
          return expectPico === undefined || spend === expectPico;
        },
        30_000,
      );
    } finally {
      await queues.close();
    }
    return spend;
  };

  const startGateways = async (): Promise<void> => {
    // All at once: every gateway finds no seed and tries to seed.
    gateways.push(
      ...(await Promise.all(
        Array.from({ length: N }, () => startGateway(config, { port: 0, host: "127.0.0.1" })),
      )),
    );
  };

  before(async () => {
    t = await createTestDatabase("budget_restarts");
    server = new TestRedisServer(await freePort());
    await server.start();
    admin = new Redis(server.port, "127.0.0.1", { maxRetriesPerRequest: null });
    admin.on("error", () => undefined);
    config = buildConfig(
      {
        general_settings: {
          use_redis_transaction_buffer: true,
          proxy_batch_write_at: 0.2,
          master_key: MASTER,
        },
        litellm_settings: { cache: true, cache_params: { type: "redis" } },
        spend_buffer_settings: {
          key_prefix: prefix,
          flush_jitter_seconds: 0,
          worker_flush_every_seconds: 0.2,
          budget_refresh_seconds: 0.05,
          budget_lease_fraction: 0.1,
          model_prices: {
            "mock-small": { input_cost_per_token: "0.0000001", output_cost_per_token: "0.0000003" },
          },
        },
      },
      { REDIS_URL: server.url, DATABASE_URL: t.url },
    );
    worker = await startFlushWorker(config, { port: false, maintainEveryMs: 500 });
  });
  after(async () => {
    for (const g of gateways) await g.close().catch(() => undefined);
    await worker.close().catch(() => undefined);
    admin.disconnect();
    await server.destroy();
    await t.drop();
  });

  it("a cold start of every gateway at once seeds from committed spend once", async () => {
    // 24 requests' spend already committed when the budget's period began at 0:
    // 16 remain. Two gateways seeding it both would leave none.
    const key = await createKey(t.db, { userId: "cold-user" });
    await setBudget(t.db, "key", key.token, { maxBudget: picoToDecimal(BUDGET * C) }, 0n);
    await t.db.verificationToken.update({
      where: { token: key.token },
      data: { spend: picoToDecimal(24n * C) },
    });
    await startGateways();
    const served = await spendUntilRefused(key);
    const spend = await committed(key, (24n + BigInt(served)) * C);
    assert.ok(spend >= BUDGET * C, `refused at ${picoToDecimal(spend)}, before the budget`);
    // Sequential requests: F = 1 in flight per gateway.
    assert.ok(
      spend <= (BUDGET + BigInt(N) * 2n) * C,
      `${picoToDecimal(spend)} past max_budget + N × (F + 1) × C`,
    );
  });

  it("Redis restarted empty mid-period: the new seed counts committed spend once, old slices are void", async () => {
    const key = await createKey(t.db, { userId: "restart-user" });
    await setBudget(t.db, "key", key.token, { maxBudget: picoToDecimal(BUDGET * C) }, 0n);
    for (const g of gateways) await g.close();
    gateways.length = 0;
    await startGateways();

    // Spend 24 of 40 and let it commit: both gateways hold slices of this seeding.
    let spentBefore = 0;
    for (let n = 0; spentBefore < 24; n++) {
      const [status] = await chat(n % N, key);
      if (status === 200) spentBefore++;
      else await new Promise((r) => setTimeout(r, 10));
    }
    await committed(key, BigInt(spentBefore) * C);

    // Its state before the kill: seeded, with what this period has left.
    assert.equal(await admin.exists(budgetKey(prefix, "key", key.token)), 1);
    const runId = async (): Promise<string> =>
      /run_id:(\w+)/.exec(await admin.info("server"))?.[1] ?? "";
    const before = await runId();
    await server.stop("SIGKILL");
    await server.start();
    // A new server with nothing (a gateway may have re-seeded the key since it answered).
    await waitFor(
      "the admin connection to be back",
      async () => (await runId()) !== before,
      10_000,
    );

    const after = await spendUntilRefused(key);
    const spend = await committed(key, BigInt(spentBefore + after) * C);
    // Counted twice (24 + 24 ≥ 40), the new seed would release nothing: refused early.
    assert.ok(spend >= BUDGET * C, `refused at ${picoToDecimal(spend)}, before the budget`);
    // Released again in full, 24 + 40 would be spent. The bound after a restart
    // (docs/budgets.md): max_budget + N × (F + 1) × C + N × one slice of the old seeding.
    const bound = (BUDGET + BigInt(N) * 2n + BigInt(N) * SLICE) * C;
    assert.ok(
      spend <= bound,
      `${picoToDecimal(spend)} past the restart bound ${picoToDecimal(bound)}`,
    );
  });
});

import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { setBudget } from "../../src/budget/budget-store.js";
import { buildConfig } from "../../src/config/config.js";
import { picoToDecimal, usdStringToPico } from "../../src/contract/money.js";
import { createKey, type CreatedKey } from "../../src/gateway/virtual-keys.js";
import { configFile, redisUrl } from "../support/cli.js";
import { createTestDatabase, type TestDatabase } from "../support/db.js";
import { Harness } from "../support/harness.js";
import { spawnCli, type Spawned } from "../support/processes.js";
import { cleanRedis, TEST_REDIS_URL, uniquePrefix } from "../support/redis.js";

const MASTER = "sk-master-budget-system";
/** One request: 4 words in, 4 out, at 0.0000001 and 0.0000003 USD per token. */
const C = usdStringToPico("0.0000016");
const N = 3;
/** Requests each gateway keeps in flight. */
const F = 8;

/**
 * The overshoot bound, with gateway processes: N = 3 gateways hammer one
 * key's budget, then one team's across three keys, F = 8 requests in flight
 * each, until every gateway refuses. After the drain the spend committed in
 * PostgreSQL is at least the budget (every lease was spent) and at most
 * max_budget + N × (F + 1) × C (docs/budgets.md). A gateway SIGKILLed
 * mid-run loses its lease to the period and its unsent spend, never counts
 * anything twice: the bound still holds.
 */
describe("budgets across gateway processes: the overshoot bound", () => {
  let t: TestDatabase;
  const prefix = uniquePrefix("budget-sys");
  let config: string;
  const gateways: { proc: Spawned; port: number }[] = [];

  const chat = async (port: number, key: CreatedKey): Promise<number> => {
    const res = await fetch(`http://127.0.0.1:${port}/v1/chat/completions`, {
      method: "POST",
      headers: { authorization: `Bearer ${key.key}`, "content-type": "application/json" },
      body: JSON.stringify({
        model: "mock-small",
        messages: [{ role: "user", content: "a b c d" }],
      }),
    }).catch(() => undefined);
    if (res === undefined) return 0;
    const body = (await res.json()) as { error?: { code?: string } };
    if (res.status === 400) assert.equal(body.error?.code, "budget_exceeded");
    return res.status;
  };

  /** F loops per gateway, each until it has seen three refusals in a row; the requests served. */
  const hammer = async (
    keyFor: (g: number) => CreatedKey,
    live: () => number[],
    during?: (served: number) => void,
  ): Promise<number> => {
    let served = 0;
    const loops = live().flatMap((g) =>
      Array.from({ length: F }, async () => {
        let refusals = 0;
        while (refusals < 3) {
          const gw = gateways[g];
          if (gw === undefined) return;
          const status = await chat(gw.port, keyFor(g));
          if (status === 0) return; // the gateway was killed
          if (status === 200) {
            served++;
            refusals = 0;
            during?.(served);
          } else if (status === 400) refusals++;
          else await new Promise((r) => setTimeout(r, 5)); // 503 budget_pending: a lease on its way
        }
      }),
    );
    await Promise.all(loops);
    return served;
  };

  before(async () => {
    t = await createTestDatabase("budget_system");
    config = configFile(`
general_settings:
  use_redis_transaction_buffer: true
  proxy_batch_write_at: 0.2
  database_url: ${t.url}
  master_key: ${MASTER}
litellm_settings:
  cache: true
  cache_params: { type: redis, host: ${redisUrl.hostname}, port: ${redisUrl.port || "6379"} }
spend_buffer_settings:
  key_prefix: ${prefix}
  budget_refresh_seconds: 0.1
  budget_lease_fraction: 0.02
  model_prices:
    mock-small: { input_cost_per_token: "0.0000001", output_cost_per_token: "0.0000003" }
`);
  });
  after(async () => {
    for (const g of gateways) g.proc.kill("SIGKILL");
    await cleanRedis(prefix);
    await t.drop();
  });

  const start = async (): Promise<void> => {
    for (let i = gateways.length; i < N; i++) {
      const proc = spawnCli(["gateway", "--config", config, "--port", "0", "--host", "127.0.0.1"], {
        REDIS_URL: TEST_REDIS_URL,
        DATABASE_URL: t.url,
        LOG_LEVEL: "info",
      });
      const ready = await proc.waitForEvent((e) => e.msg === "gateway listening");
      gateways.push({ proc, port: Number(ready.port) });
    }
  };

  const committed = async (): Promise<{ key: bigint; team: bigint }> => {
    const cfg = buildConfig(
      {
        general_settings: { use_redis_transaction_buffer: true },
        litellm_settings: { cache: true, cache_params: { type: "redis" } },
        spend_buffer_settings: { key_prefix: prefix },
      },
      { REDIS_URL: TEST_REDIS_URL, DATABASE_URL: t.url },
    );
    const h = new Harness(cfg, t.db);
    try {
      for (let i = 0; i < 50 && (await h.waitingJobs()) > 0; i++) await h.flusher().flushOnce();
    } finally {
      await h.close();
    }
    const key = await t.db.verificationToken.findUnique({ where: { token: keys[0]?.token ?? "" } });
    const team = await t.db.teamTable.findUnique({ where: { teamId: "hammer-team" } });
    return {
      key: usdStringToPico(key?.spend.toFixed(12) ?? "0"),
      team: usdStringToPico(team?.spend.toFixed(12) ?? "0"),
    };
  };

  const keys: CreatedKey[] = [];

  it("one key, three gateways: at least the budget, at most max_budget + N × (F + 1) × C", async (ctx) => {
    for (let i = 0; i < 4; i++)
      keys.push(await createKey(t.db, { userId: `hammer-u${i}`, teamId: "hammer-team" }));
    const budget = 400n * C;
    await setBudget(t.db, "key", keys[0]?.token ?? "", { maxBudget: picoToDecimal(budget) }, 0n);
    await start();
    const served = await hammer(
      () => keys[0] as CreatedKey,
      () => [0, 1, 2],
    );
    for (const g of gateways) await assertRefuses(g.port, keys[0] as CreatedKey);
    const bound = budget + BigInt(N * (F + 1)) * C;
    ctx.diagnostic(
      `one key: budget ${budget / C} C, served ${served} C (bound: budget + ${N * (F + 1)} C)`,
    );
    assert.ok(
      BigInt(served) * C >= budget,
      `served ${served} × C, under the budget ${budget / C} × C`,
    );
    assert.ok(BigInt(served) * C <= bound, `served ${served} × C, past the bound ${bound / C} × C`);
    // What was committed is what was served: once each.
    for (const g of gateways.splice(0)) {
      g.proc.kill("SIGTERM");
      await g.proc.done;
    }
    const spent = (await committed()).key;
    assert.equal(spent, BigInt(served) * C, "committed = served × C");
  });

  it("one team across three keys, one gateway killed mid-run: never past the bound, nothing twice", async (ctx) => {
    const budget = 600n * C;
    await start();
    const res = await fetch(`http://127.0.0.1:${gateways[0]?.port ?? 0}/team/new`, {
      method: "POST",
      headers: { authorization: `Bearer ${MASTER}`, "content-type": "application/json" },
      body: JSON.stringify({ team_id: "hammer-team", max_budget: picoToDecimal(budget) }),
    });
    assert.equal(res.status, 200, await res.text());
    const before = (await committed()).team;
    await new Promise((r) => setTimeout(r, 400));
    let killed = false;
    const served = await hammer(
      (g) => keys[g + 1] as CreatedKey,
      () => [0, 1, 2],
      (n) => {
        if (!killed && n >= 200) {
          killed = true;
          gateways[2]?.proc.kill("SIGKILL");
          gateways.splice(2, 1);
        }
      },
    );
    assert.ok(killed);
    for (const g of gateways) await assertRefuses(g.port, keys[1] as CreatedKey);
    for (const g of gateways.splice(0)) {
      g.proc.kill("SIGTERM");
      await g.proc.done;
    }
    const spent = (await committed()).team - before;
    const bound = budget + BigInt(N * (F + 1)) * C;
    ctx.diagnostic(
      `one team: budget ${budget / C} C, served ${served} C, committed ${spent / C} C (bound: budget + ${N * (F + 1)} C)`,
    );
    assert.ok(spent <= bound, `committed ${spent / C} × C, past the bound ${bound / C} × C`);
    // The killed gateway's last interval of spend is lost with it; the rest is there once.
    assert.ok(spent <= BigInt(served) * C, "nothing counted twice");
  });

  async function assertRefuses(port: number, key: CreatedKey): Promise<void> {
    for (let i = 0; i < 20; i++) {
      const status = await chat(port, key);
      if (status === 400) return;
      await new Promise((r) => setTimeout(r, 20));
    }
    assert.fail(`the gateway on ${port} still serves the spent budget`);
  }
});

/**
 * Section 9 (issue 20): how far past one budget N gateways go, flat out.
 * N gateway processes (budget-gateway-child.ts) each get F requests in
 * flight on one key whose budget fits `budgetRequests` requests, with a
 * flush worker at the product's defaults running throughout; every loop
 * goes on until it is refused three times in a row. Then the gateways stop
 * (giving back unspent leases, delivering what they hold), the worker drains,
 * and the key's spend committed in PostgreSQL is held against the budget.
 *
 * Run twice, the same way: with the product's leases, and with the naive
 * per-gateway check against committed spend (naive-budget.ts). The leases'
 * overshoot is held to the bound docs/budgets.md states, max_budget +
 * N × (F + 1) × C; the naive one shows what that bound saves.
 * Exact either way: committed spend = requests served × C, to the picodollar.
 */
import http from "node:http";
import { Redis } from "ioredis";
import { setBudget } from "../src/budget/budget-store.js";
import { decimalToPico, picoToDecimal } from "../src/contract/money.js";
import { createRedis } from "../src/redis/connection.js";
import { redisKeys } from "../src/redis/keys.js";
import { openSpendQueues } from "../src/queue/spend-queues.js";
import { createKey } from "../src/gateway/virtual-keys.js";
import { TEST_REDIS_URL, testConfig } from "../test/support/redis.js";
import type { Spawned } from "../test/support/processes.js";
import { pendingSpendJobs, stopWorker } from "./drain.js";
import { GATEWAY_MODEL, GATEWAY_PRICE } from "./gateway-traffic.js";
import { barrierKeys, lastJsonLine, waitForCount } from "./protocol.js";
import type { Resources } from "./resources.js";
import { progress, sleep } from "./util.js";

export interface BudgetOvershootPlan {
  /** Gateway processes. */
  gateways: number;
  /** Requests each gateway has in flight. */
  inFlight: number;
  /** The budget, in requests of the section's one cost. */
  budgetRequests: number;
  /** Longest the hammering may go on before the section fails. */
  timeoutMs: number;
}

export type BudgetMode = "leases" | "naive";

export interface OvershootRun {
  mode: BudgetMode;
  served: number;
  /** 400 budget_exceeded answers. */
  refused: number;
  /** 503 budget_pending answers (leases only: a share spent, its renewal on the way). */
  pending: number;
  hammerMs: number;
  servedPerSec: number;
  /** Picodollars, exact decimal text. */
  committedPico: string;
  /** committed − max_budget, picodollars (negative: under). */
  overshootPico: string;
  /** The overshoot in requests of cost C. */
  overshootRequests: number;
  /** committed = served × C exactly. */
  exact: boolean;
  /** Budget lease calls to Redis over all gateways (none for naive). */
  leaseCalls: number;
}

export interface BudgetOvershootResult {
  gateways: number;
  inFlight: number;
  /** One request's cost C, picodollars. */
  costPico: string;
  budgetPico: string;
  /** N × (F + 1) × C, picodollars. */
  boundPico: string;
  runs: OvershootRun[];
}

/** One request, always the same: four words in, the mock's answer out, priced like gpt-4o. */
const BODY = JSON.stringify({
  model: GATEWAY_MODEL,
  messages: [{ role: "user", content: "one two three four" }],
});
const PRICE_IN = decimalToPico(GATEWAY_PRICE.input_cost_per_token);
const PRICE_OUT = decimalToPico(GATEWAY_PRICE.output_cost_per_token);

interface Answer {
  status: number;
  costPico?: bigint;
  code?: string;
}

function post(agent: http.Agent, port: number, key: string): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = http.request(
      {
        agent,
        host: "127.0.0.1",
        port,
        method: "POST",
        path: "/v1/chat/completions",
        headers: {
          authorization: `Bearer ${key}`,
          "content-type": "application/json",
          "content-length": Buffer.byteLength(BODY),
        },
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("end", () => {
          const status = res.statusCode ?? 0;
          const body = JSON.parse(Buffer.concat(chunks).toString("utf8")) as {
            usage?: { prompt_tokens: number; completion_tokens: number };
            error?: { code?: string };
          };
          const u = body.usage;
          resolve({
            status,
            ...(u !== undefined
              ? {
                  costPico:
                    BigInt(u.prompt_tokens) * PRICE_IN + BigInt(u.completion_tokens) * PRICE_OUT,
                }
              : {}),
            ...(body.error?.code !== undefined ? { code: body.error.code } : {}),
          });
        });
        res.on("error", reject);
      },
    );
    req.on("error", reject);
    req.end(BODY);
  });
}

/** The cost C of the section's request: one request answered by the mock. */
async function requestCost(port: number, key: string): Promise<bigint> {
  const agent = new http.Agent({ keepAlive: false });
  try {
    const a = await post(agent, port, key);
    if (a.status !== 200 || a.costPico === undefined)
      throw new Error(`calibration request answered ${a.status}`);
    return a.costPico;
  } finally {
    agent.destroy();
  }
}

async function runMode(
  mode: BudgetMode,
  plan: BudgetOvershootPlan,
  res: Resources,
  cost: { pico: bigint } | undefined,
): Promise<{ run: OvershootRun; costPico: bigint; budgetPico: bigint }> {
  const S = `budgets ${mode}`;
  const t = await res.database(`budget_${mode}`);
  const prefix = res.prefix(`budget-${mode}`);
  const redis = createRedis(testConfig(prefix, t.url).redis, "worker");
  const queues = openSpendQueues(redis, redisKeys(prefix));
  const gateways: { proc: Spawned; port: number }[] = [];
  let worker: Spawned | undefined;
  try {
    // The calibration key has no budget: its request gives C before the budget is set.
    const calibration = await createKey(t.db, { userId: "calibration" });
    const hammered = await createKey(t.db, { userId: "hammered" });
    const control = new Redis(TEST_REDIS_URL);
    try {
      const ready = Number((await control.get(barrierKeys(prefix).workerReady)) ?? "0");
      const w = res.spawn("flush-worker-child.ts", {
        PREFIX: prefix,
        DATABASE_URL: t.url,
        DEFAULTS: "1",
        HOLDER: `budget-${mode}`,
      });
      worker = w;
      let exited: string | undefined;
      void w.done.then((r) => (exited = `the worker exited: ${r.stderr.slice(-1000)}`));
      await waitForCount(
        control,
        barrierKeys(prefix).workerReady,
        ready + 1,
        120_000,
        () => exited,
      );
    } finally {
      control.disconnect();
    }
    // C is measured on the first mode's gateway; the budget is set before any gateway starts
    // (a gateway loads budgets at start), so the first calibrates through a gateway of its own.
    let c = cost?.pico;
    if (c === undefined) {
      const probe = res.spawn("budget-gateway-child.ts", {
        MODE: mode,
        PREFIX: prefix,
        DATABASE_URL: t.url,
      });
      const up = await probe.waitForEvent((e) => typeof e.port === "number", 60_000);
      c = await requestCost(Number(up.port), calibration.key);
      probe.kill("SIGTERM");
      await probe.done;
    }
    const budgetPico = c * BigInt(plan.budgetRequests);
    await setBudget(t.db, "key", hammered.token, { maxBudget: picoToDecimal(budgetPico) }, 0n);

    progress(S, `starting ${plan.gateways} gateways`);
    for (let i = 0; i < plan.gateways; i++) {
      const proc = res.spawn("budget-gateway-child.ts", {
        MODE: mode,
        PREFIX: prefix,
        DATABASE_URL: t.url,
      });
      gateways.push({ proc, port: 0 });
    }
    for (const g of gateways)
      g.port = Number((await g.proc.waitForEvent((e) => typeof e.port === "number", 120_000)).port);

    let served = 0;
    let refused = 0;
    let pending = 0;
    let servedCost = 0n;
    const deadline = Date.now() + plan.timeoutMs;
    const agents = gateways.map(
      () => new http.Agent({ keepAlive: true, maxSockets: plan.inFlight }),
    );
    progress(
      S,
      `${plan.gateways} gateways × ${plan.inFlight} in flight on one key, budget ${plan.budgetRequests} requests`,
    );
    const started = Date.now();
    await Promise.all(
      gateways.flatMap((g, gi) =>
        Array.from({ length: plan.inFlight }, async () => {
          let refusals = 0;
          while (refusals < 3) {
            if (Date.now() > deadline)
              throw new Error(`${S}: still served after ${plan.timeoutMs} ms`);
            const a = await post(agents[gi] as http.Agent, g.port, hammered.key);
            if (a.status === 200) {
              served++;
              servedCost += a.costPico ?? 0n;
              refusals = 0;
            } else if (a.status === 400 && a.code === "budget_exceeded") {
              refused++;
              refusals++;
            } else if (a.status === 503) {
              pending++;
              await sleep(5);
            } else throw new Error(`${S}: answered ${a.status} ${a.code ?? ""}`);
          }
        }),
      ),
    );
    const hammerMs = Date.now() - started;
    for (const a of agents) a.destroy();

    // Stopped: leases given back, everything held delivered. Then the worker drains it all.
    let leaseCalls = 0;
    for (const g of gateways) g.proc.kill("SIGTERM");
    for (const g of gateways) {
      const out = await g.proc.done;
      const r = lastJsonLine(out.stdout) as { leaseCalls?: number } | undefined;
      leaseCalls += r?.leaseCalls ?? 0;
    }
    const drainDeadline = Date.now() + 120_000;
    while ((await pendingSpendJobs(queues)) > 0) {
      if (Date.now() > drainDeadline) throw new Error(`${S}: spend jobs still pending`);
      await sleep(50);
    }
    await stopWorker(worker);
    worker = undefined;
    const row = await t.db.verificationToken.findUnique({ where: { token: hammered.token } });
    const committed = decimalToPico(row?.spend.toFixed(12) ?? "0");
    const over = committed - budgetPico;
    const run: OvershootRun = {
      mode,
      served,
      refused,
      pending,
      hammerMs,
      servedPerSec: Math.round((served * 1000) / Math.max(1, hammerMs)),
      committedPico: committed.toString(),
      overshootPico: over.toString(),
      overshootRequests: Number(over) / Number(c),
      exact: committed === servedCost && servedCost === BigInt(served) * c,
      leaseCalls,
    };
    progress(
      S,
      `${served} served (${run.servedPerSec}/s), ${refused} refused, ${pending} pending; committed ${picoToDecimal(committed)} USD of ${picoToDecimal(budgetPico)}: ${run.overshootRequests.toFixed(1)} requests over; ${leaseCalls} lease calls; ${run.exact ? "exact" : "NOT exact"}`,
    );
    return { run, costPico: c, budgetPico };
  } finally {
    for (const g of gateways) g.proc.kill("SIGKILL");
    if (worker !== undefined) worker.kill("SIGKILL");
    await queues.close().catch(() => undefined);
    redis.disconnect();
    await res.cleanPrefix(prefix).catch(() => undefined);
    await res.dropDatabase(t).catch(() => undefined);
  }
}

export async function measureBudgetOvershoot(
  plan: BudgetOvershootPlan,
  res: Resources,
): Promise<BudgetOvershootResult> {
  const leases = await runMode("leases", plan, res, undefined);
  const naive = await runMode("naive", plan, res, { pico: leases.costPico });
  const bound = BigInt(plan.gateways) * BigInt(plan.inFlight + 1) * leases.costPico;
  return {
    gateways: plan.gateways,
    inFlight: plan.inFlight,
    costPico: leases.costPico.toString(),
    budgetPico: leases.budgetPico.toString(),
    boundPico: bound.toString(),
    runs: [leases.run, naive.run],
  };
}

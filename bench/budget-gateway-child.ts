/**
 * A gateway of the budgets section (bench/budget-overshoot.ts): the Express
 * app the gateway service runs, its real producer (default seal interval,
 * QueueSink on the run's prefix) and, as MODE says, either the product's
 * budget enforcement (MODE=leases: BudgetBook, wired as gateway.ts wires it)
 * or the naive per-gateway check against committed spend (MODE=naive,
 * bench/naive-budget.ts). Everything else is the same code. Prints {"port"}
 * once listening; on SIGTERM gives back what it leased, delivers what it
 * holds, prints {"leaseCalls"} (the Redis calls its budgets made) and exits.
 */
import type { AddressInfo } from "node:net";
import type { BudgetGuard } from "../src/budget/budget-guard.js";
import { budgetMetrics } from "../src/budget/budget-metrics.js";
import { gatewayBudgetBook } from "../src/gateway/gateway-budgets.js";
import { createGatewayApp } from "../src/gateway/app.js";
import { KeyCache } from "../src/gateway/virtual-keys.js";
import { silentLogger } from "../src/observe/logger.js";
import { SpendMetrics } from "../src/observe/metrics.js";
import { createDb } from "../src/persist/prisma.js";
import { QueueSink } from "../src/queue/queue-sink.js";
import { createSpendProducer } from "../src/wiring/create-producer.js";
import { gatewayConfig } from "./gateway-traffic.js";
import { NaiveBudgetCheck } from "./naive-budget.js";

const mode = process.env.MODE === "naive" ? "naive" : "leases";
const config = gatewayConfig(process.env.PREFIX ?? "", process.env.DATABASE_URL ?? "");
const db = createDb(config.databaseUrl, { max: 3 });
const metrics = new SpendMetrics();
const producer = await createSpendProducer(config, { db, metrics, logger: silentLogger });
const queues = producer.sink instanceof QueueSink ? producer.sink.queues : [];
const redis = queues[0]?.connection;
if (redis === undefined) throw new Error("the budgets section needs the buffer on (Redis)");

let budgets: BudgetGuard;
let closeBudgets: () => Promise<void>;
if (mode === "leases") {
  const book = gatewayBudgetBook(config, {
    db,
    redis,
    queues,
    producer,
    metrics,
    logger: silentLogger,
  });
  await book.start();
  budgets = book;
  closeBudgets = () => book.close();
} else {
  const naive = new NaiveBudgetCheck(db, config.gateway.budgetRefreshMs);
  await naive.start();
  budgets = naive;
  closeBudgets = () => {
    naive.close();
    return Promise.resolve();
  };
}

const app = createGatewayApp({
  config,
  producer,
  keys: new KeyCache(db, config.gateway.keyCacheTtlMs, config.gateway.keyCacheMaxEntries),
  db,
  metrics,
  logger: silentLogger,
  checks: {},
  draining: () => false,
  queues,
  budgets,
});
const server = app.listen(0, "127.0.0.1", () => {
  process.stdout.write(`${JSON.stringify({ port: (server.address() as AddressInfo).port })}\n`);
});
server.keepAliveTimeout = 60_000;

process.once("SIGTERM", () => {
  server.close();
  server.closeAllConnections();
  void closeBudgets()
    .then(() => producer.close())
    .catch((err: unknown) => process.stderr.write(`close: ${String(err)}\n`))
    .finally(() => {
      void (async () => {
        // Redis calls budgets made while the section ran: leases asked, whatever their outcome.
        const leases = (await budgetMetrics(metrics).leases.get()).values;
        const calls = leases.reduce((a, v) => a + v.value, 0);
        await db.$disconnect().catch(() => undefined);
        process.stdout.write(`${JSON.stringify({ leaseCalls: calls })}\n`, () => process.exit(0));
      })();
    });
});

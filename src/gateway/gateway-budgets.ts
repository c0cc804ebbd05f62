import { BudgetAlerts } from "../budget/budget-alerts.js";
import { BudgetBook } from "../budget/budget-book.js";
import { budgetMetrics } from "../budget/budget-metrics.js";
import type { AppConfig } from "../config/config.js";
import type { Logger } from "../observe/logger.js";
import type { SpendMetrics } from "../observe/metrics.js";
import type { Db } from "../persist/prisma.js";
import type { SpendProducer } from "../produce/producer.js";
import type { RedisClient } from "../redis/connection.js";
import { liveSpend, type LiveSpendSources } from "./live-spend.js";

/**
 * A gateway's budget enforcement as the gateway service wires it: leases in
 * Redis, seeds from the entity's live spend (committed, waiting in Redis, and
 * held by this gateway's producer), threshold alerts to the configured
 * webhook. Not started: the caller starts it (and closes it).
 */
export function gatewayBudgetBook(
  config: AppConfig,
  deps: {
    db: Db;
    redis: RedisClient;
    queues: LiveSpendSources["queues"];
    producer: SpendProducer;
    metrics: SpendMetrics;
    logger: Logger;
  },
): BudgetBook {
  const { db, queues, producer } = deps;
  const metrics = budgetMetrics(deps.metrics);
  return new BudgetBook({
    db,
    redis: deps.redis,
    keyPrefix: config.keyPrefix,
    logger: deps.logger,
    metrics,
    liveSpend: async (kind, id) => (await liveSpend({ db, queues, producer }, kind, id)).totalPico,
    refreshMs: config.gateway.budgetRefreshMs,
    leaseFraction: config.gateway.budgetLeaseFraction,
    alertThresholds: config.gateway.budgetAlertThresholds,
    alerts: new BudgetAlerts({
      db,
      logger: deps.logger,
      metrics,
      ...(config.gateway.budgetWebhookUrl !== undefined
        ? { webhookUrl: config.gateway.budgetWebhookUrl }
        : {}),
    }),
  });
}

import type { AppConfig } from "../../config/config.js";
import type { Logger } from "../../observe/logger.js";
import type { Db } from "../../persist/prisma.js";
import type { ProducerMetrics } from "../../produce/producer-metrics.js";
import type { SpendProducer } from "../../produce/producer.js";
import type { SpendEventError } from "../../produce/spend-event.js";
import type { SpendQueues } from "../../queue/spend-queues.js";
import type { BudgetGuard } from "../../budget/budget-guard.js";
import type { ChargeCheck } from "../charge-check.js";
import type { GatewayMetrics } from "../gateway-metrics.js";
import type { IdempotencyStore } from "../idempotency.js";
import type { ModelCatalog } from "../models.js";

/** What every route handler of the gateway works with. */
export interface RouteContext {
  config: AppConfig;
  producer: SpendProducer;
  db: Db;
  logger: Logger;
  models: ModelCatalog;
  charge: ChargeCheck;
  producerStats: ProducerMetrics;
  /** The spend queues (one set per partition), for live spend; empty with the buffer off. */
  queues: readonly SpendQueues[];
  /** Budget enforcement (with the buffer on: its leases live in Redis). */
  budgets?: BudgetGuard;
  gatewayStats: GatewayMetrics;
  /**
   * Tells every gateway that these keys (hashes) changed, after the change
   * committed; rejects if it could not (key-sync.ts).
   */
  announceKeyChanges: (tokens: readonly string[]) => Promise<void>;
  /** Idempotency-Key claims for POST /spend/events; absent with the buffer off (no Redis). */
  idempotency?: IdempotencyStore;
}

/** A validation's refusal, counted: why the producer would refuse the spend. */
export function counted(ctx: RouteContext, err: SpendEventError): SpendEventError {
  ctx.producerStats.eventsRejected.inc({ reason: err.reason });
  return err;
}

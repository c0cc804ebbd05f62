import { picoToDecimal } from "../contract/money.js";
import type { Logger } from "../observe/logger.js";
import type { Db } from "../persist/prisma.js";
import type { BudgetMetrics } from "./budget-metrics.js";
import type { BudgetKind } from "./budget-store.js";

/** A threshold an entity's spend crossed in a period. */
export interface BudgetAlert {
  kind: BudgetKind;
  id: string;
  /** "soft_budget", or a share of max_budget such as "80%". */
  threshold: string;
  /** The period's spend when it was crossed, as the gateways had reported it. */
  spendPico: bigint;
  maxPico: bigint | null;
  softPico: bigint | null;
  periodStart: Date;
  resetAt: Date | null;
}

export interface BudgetAlertsOptions {
  db: Db;
  logger: Logger;
  metrics: BudgetMetrics;
  /** Where each alert is POSTed (JSON); none: log and metric only. */
  webhookUrl?: string;
  /** Delivery attempts before giving up (backoff 0.5 s, doubling). */
  attempts?: number;
  timeoutMs?: number;
}

/**
 * Threshold alerts, once per entity, period and threshold across the fleet.
 * Redis tells one gateway it crossed a threshold (report-1.lua); that
 * gateway inserts the alert in PostgreSQL (the primary key makes it once even
 * when Redis lost its claim and a second gateway is told), and only the one
 * that inserted it logs it, counts it and POSTs it to the webhook, retrying
 * with backoff. The payload's `id` is the same for every attempt, so a
 * receiver can drop a repeat delivery.
 */
export class BudgetAlerts {
  private readonly inFlight = new Set<Promise<void>>();
  private closed = false;

  constructor(private readonly o: BudgetAlertsOptions) {}

  async emit(a: BudgetAlert): Promise<void> {
    const inserted = await this.o.db.$executeRaw`
      INSERT INTO spend_budget_alert (entity_kind, entity_id, period_start, threshold, spend)
      VALUES (${a.kind}, ${a.id}, ${a.periodStart}, ${a.threshold}, ${picoToDecimal(a.spendPico)}::numeric)
      ON CONFLICT DO NOTHING`;
    if (inserted === 0) return;
    this.o.metrics.alerts.inc({
      kind: a.kind,
      threshold: a.threshold === "soft_budget" ? "soft_budget" : "max_budget_share",
    });
    this.o.logger.warn(
      {
        kind: a.kind,
        // Ids follow the id rules (no control characters, at most 256), so the line stays one line;
        // a key is named by its hash, as in PostgreSQL.
        id: a.id,
        threshold: a.threshold,
        spend: picoToDecimal(a.spendPico),
        maxBudget: a.maxPico === null ? null : picoToDecimal(a.maxPico),
      },
      "budget threshold crossed",
    );
    if (this.o.webhookUrl === undefined || this.closed) return;
    const p = this.deliver(a).finally(() => this.inFlight.delete(p));
    this.inFlight.add(p);
  }

  /** Lets deliveries under way finish their current attempt; later retries are abandoned. */
  async close(): Promise<void> {
    this.closed = true;
    await Promise.all(this.inFlight);
  }

  private async deliver(a: BudgetAlert): Promise<void> {
    const url = this.o.webhookUrl ?? "";
    const body = JSON.stringify({
      event: "budget_threshold_crossed",
      id: `${a.kind}:${a.id}:${a.periodStart.toISOString()}:${a.threshold}`,
      entity_kind: a.kind,
      entity_id: a.id,
      threshold: a.threshold,
      spend: picoToDecimal(a.spendPico),
      max_budget: a.maxPico === null ? null : picoToDecimal(a.maxPico),
      soft_budget: a.softPico === null ? null : picoToDecimal(a.softPico),
      period_start: a.periodStart.toISOString(),
      budget_reset_at: a.resetAt?.toISOString() ?? null,
    });
    const attempts = this.o.attempts ?? 6;
    for (let attempt = 0; attempt < attempts; attempt++) {
      if (attempt > 0) {
        if (this.closed) break;
        await new Promise((r) => setTimeout(r, 500 * 2 ** (attempt - 1)).unref());
      }
      try {
        const res = await fetch(url, {
          method: "POST",
          headers: { "content-type": "application/json" },
          body,
          signal: AbortSignal.timeout(this.o.timeoutMs ?? 5_000),
        });
        if (res.ok) {
          await this.o.db.spendBudgetAlert
            .updateMany({
              where: {
                entityKind: a.kind,
                entityId: a.id,
                periodStart: a.periodStart,
                threshold: a.threshold,
              },
              data: { deliveredAt: new Date() },
            })
            .catch(() => undefined);
          this.o.metrics.webhooks.inc({ outcome: "delivered" });
          return;
        }
        this.o.metrics.webhooks.inc({ outcome: "retried" });
      } catch {
        this.o.metrics.webhooks.inc({ outcome: "retried" });
      }
    }
    this.o.metrics.webhooks.inc({ outcome: "failed" });
    this.o.logger.error(
      { kind: a.kind, threshold: a.threshold },
      "budget alert not delivered to the webhook",
    );
  }
}

import { Counter, Gauge, type Registry } from "prom-client";
import type { SpendMetrics } from "../observe/metrics.js";
import { BUDGET_KINDS } from "./budget-store.js";

/** Lease outcomes (budget_leases_total{outcome}). */
export const LEASE_OUTCOMES = [
  "granted",
  "exhausted",
  "seeded",
  "forfeited",
  "period_over",
  "failed",
] as const;

/** A gateway's budget enforcement. */
export class BudgetMetrics {
  readonly refusals: Counter<"kind" | "reason">;
  readonly leases: Counter<"outcome">;
  readonly periods: Counter<"kind">;
  readonly enforced: Gauge;
  readonly alerts: Counter<"kind" | "threshold">;
  readonly webhooks: Counter<"outcome">;

  constructor(registry: Registry) {
    const registers = [registry];
    this.refusals = new Counter({
      name: "budget_refusals_total",
      help: "Requests refused for a budget, by the entity's kind and reason: exhausted (400 budget_exceeded) or pending (503: its share spent, a lease on its way).",
      labelNames: ["kind", "reason"],
      registers,
    });
    this.leases = new Counter({
      name: "budget_leases_total",
      help: "Budget leases this gateway asked Redis for, by outcome: granted, exhausted (nothing left), seeded (it set the period's state up), forfeited (Redis was seeded again: what it held was void), period_over, failed.",
      labelNames: ["outcome"],
      registers,
    });
    this.periods = new Counter({
      name: "budget_periods_reset_total",
      help: "Budget periods this gateway closed in PostgreSQL (one gateway per boundary), by the entity's kind.",
      labelNames: ["kind"],
      registers,
    });
    this.enforced = new Gauge({
      name: "budget_entities",
      help: "Budgets (entities with a max_budget or soft_budget) this gateway enforces.",
      registers,
    });
    this.alerts = new Counter({
      name: "budget_alerts_total",
      help: "Budget threshold alerts this gateway raised (once per entity, period and threshold across the fleet), by the entity's kind and threshold: soft_budget or max_budget_share (budget_alert_thresholds).",
      labelNames: ["kind", "threshold"],
      registers,
    });
    this.webhooks = new Counter({
      name: "budget_webhook_deliveries_total",
      help: "Attempts to POST budget alerts to budget_webhook_url, by outcome: delivered, retried, failed (gave up).",
      labelNames: ["outcome"],
      registers,
    });
    for (const outcome of ["delivered", "retried", "failed"]) this.webhooks.inc({ outcome }, 0);
    for (const kind of BUDGET_KINDS) {
      for (const threshold of ["soft_budget", "max_budget_share"])
        this.alerts.inc({ kind, threshold }, 0);
      for (const reason of ["exhausted", "pending"]) this.refusals.inc({ kind, reason }, 0);
      this.periods.inc({ kind }, 0);
    }
    for (const outcome of LEASE_OUTCOMES) this.leases.inc({ outcome }, 0);
  }
}

/** This registry's budget metrics (made on first use). */
export function budgetMetrics(m: SpendMetrics): BudgetMetrics {
  return m.use("budget", (r) => new BudgetMetrics(r));
}

/**
 * The naive budget check the budgets section holds the leases up against:
 * what a gateway can do when all it knows is the spend committed in
 * PostgreSQL (LiteLLM's per-pod check: the key's spend column against its
 * max_budget, re-read on a timer). It refuses once committed spend reaches
 * the budget, and sees nothing of what is in flight, in its own buffer, in
 * the other gateways' or waiting in Redis: that is the overshoot it shows.
 * Keys only: the section hammers one key's budget.
 */
import type { BudgetGuard, BudgetRefusal, ChargeList } from "../src/budget/budget-guard.js";
import { loadBudgetsSince, type BudgetDef } from "../src/budget/budget-store.js";
import { decimalToPico } from "../src/contract/money.js";
import type { Db } from "../src/persist/prisma.js";

export class NaiveBudgetCheck implements BudgetGuard {
  private readonly defs = new Map<string, BudgetDef>();
  private readonly committed = new Map<string, bigint>();
  private timer: NodeJS.Timeout | undefined;
  private closed = false;

  constructor(
    private readonly db: Db,
    private readonly refreshMs: number,
  ) {}

  get size(): number {
    return this.defs.size;
  }

  async start(): Promise<void> {
    await this.refresh();
    const loop = (): void => {
      if (this.closed) return;
      this.timer = setTimeout(() => {
        void this.refresh()
          .catch(() => undefined)
          .finally(loop);
      }, this.refreshMs);
    };
    loop();
  }

  close(): void {
    this.closed = true;
    clearTimeout(this.timer);
  }

  check(list: ChargeList): BudgetRefusal | undefined {
    for (const e of list.all()) {
      if (e.kind !== "key") continue;
      const def = this.defs.get(e.id);
      if (def?.maxPico == null) continue;
      if ((this.committed.get(e.id) ?? 0n) < def.maxPico) continue;
      return {
        reason: "exhausted",
        kind: "key",
        id: e.id,
        maxPico: def.maxPico,
        periodStart: def.periodStart,
        resetAt: def.resetAt,
      };
    }
    return undefined;
  }

  /** Nothing: this check learns of spend only once it is committed. */
  charge(): void {}

  async refresh(): Promise<void> {
    for (const d of await loadBudgetsSince(this.db, new Date(0)))
      if (d.kind === "key") this.defs.set(d.id, d);
    const rows = await this.db.verificationToken.findMany({
      where: { token: { in: [...this.defs.keys()] } },
      select: { token: true, spend: true },
    });
    for (const r of rows) this.committed.set(r.token, decimalToPico(r.spend.toFixed(12)));
  }
}

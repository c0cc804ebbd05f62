/**
 * Section 9 (issue 20), on the reference gateway: CPU per request with
 * budgets enforced and not. Two copies of the gateway app (gateway-child.ts,
 * BUDGETS=1), both recording, pinned to one core, serve the same requests
 * side by side; in one the product's BudgetBook enforces a budget on every
 * key, user, team and organization, both tags and the first end users (the
 * realistic cardinality), in the other budgets are switched off, and they
 * swap roles every rep, so a fixed difference between the processes cancels
 * in the mean of two reps. Reps with budgets off in both give the harness's
 * resolution. The budgets are large: leases are taken at start and never
 * renewed in a rep, the steady state of a gateway far from its limits.
 */
import { setBudget, type BudgetKind } from "../src/budget/budget-store.js";
import type { TrafficShape } from "../src/demo/traffic.js";
import { sendAll, stopChild, waitForPort } from "./gateway-overhead.js";
import { createGatewayKeys, gatewayRequests } from "./gateway-traffic.js";
import { ask, spawnPinned, type PinnedChild } from "./pinned.js";
import { referenceExchange } from "./producer-cost.js";
import type { Resources } from "./resources.js";
import { progress, spread, type Spread } from "./util.js";

export interface BudgetGatewayPlan {
  keys: number;
  /** Budgets defined in all (keys, their users, teams, orgs, tags, then end users). */
  budgets: number;
  distinctRequests: number;
  concurrency: number;
  warmupRequests: number;
  requestsPerRep: number;
  /** Even: each process enforces in as many reps as it does not. */
  reps: number;
  nullReps: number;
}

export interface BudgetGatewayResult {
  budgets: number;
  requestsPerRep: number;
  offCpuUs: Spread;
  onCpuUs: Spread;
  /** CPU per request added by budgets, µs: one value per two reps (each process enforcing once). */
  addedUs: Spread;
  /** The same with budgets off in both: the harness's resolution, µs. */
  nullUs: Spread;
  /**
   * The check and the charge timed where the gateway calls them, per rep:
   * the median check plus the median charge (ns), in the enforcing process
   * and in the other (where both return at once: the timer's own cost).
   */
  timedOnNs: Spread;
  timedOffNs: Spread;
  /** Of timedOnNs: the check's median and the charge's, per rep. */
  timedCheckNs: Spread;
  timedChargeNs: Spread;
  /** Added per request by budgets, timed in the gateway: on − off per rep, ns. */
  timedAddedNs: Spread;
}

interface Timed {
  checkNs: number;
  chargeNs: number;
}

interface CpuUsage {
  user: number;
  system: number;
}

export async function measureBudgetGateway(
  plan: BudgetGatewayPlan,
  shape: TrafficShape,
  res: Resources,
): Promise<BudgetGatewayResult> {
  const S = "budgets";
  const t = await res.database("budget_gateway");
  const prefix = res.prefix("budget-gateway");
  const children: PinnedChild[] = [];
  try {
    const keys: string[] = [];
    const budgeted: [BudgetKind, string][] = [];
    const seen = new Set<string>();
    const budget = (kind: BudgetKind, id: string): void => {
      if (seen.has(`${kind}:${id}`)) return;
      seen.add(`${kind}:${id}`);
      budgeted.push([kind, id]);
    };
    for (const created of await createGatewayKeys(t.db, plan.keys, shape)) {
      keys.push(created.key);
      budget("key", created.token);
      budget("user", created.userId ?? "");
      budget("team", created.teamId ?? "");
      budget("org", created.organizationId ?? "");
    }
    budget("tag", "env:prod");
    budget("tag", "env:dev");
    for (let i = 0; i < shape.tags; i++) budget("tag", `feature:${i}`);
    for (let i = 0; budgeted.length < plan.budgets; i++) budget("end_user", `end-user-${i}`);
    progress(S, `reference gateway: ${budgeted.length} budgets over ${plan.keys} keys`);
    for (const [kind, id] of budgeted)
      await setBudget(t.db, kind, id, { maxBudget: "1000000" }, 0n);

    const requests = gatewayRequests(
      plan.distinctRequests,
      11,
      shape,
      keys,
      referenceExchange().request,
    );
    const gateways: { c: PinnedChild; port: number }[] = [];
    for (let i = 0; i < 2; i++) {
      const c = spawnPinned("gateway-child.ts", {
        RECORDING: "on",
        BUDGETS: "1",
        PREFIX: prefix,
        DATABASE_URL: t.url,
      });
      children.push(c);
      gateways.push({ c, port: await waitForPort(c) });
    }
    type G = (typeof gateways)[number];
    const timedOn: number[] = [];
    const timedOff: number[] = [];
    const timedCheck: number[] = [];
    const timedCharge: number[] = [];
    const drive = async (n: number, on: G, off: G, enforce = true): Promise<[number, number]> => {
      const [a, b] = await Promise.all([
        ask<{ budgets: boolean; enforced: number }>(
          on.c.child,
          enforce ? "budgets:on" : "budgets:off",
        ),
        ask<{ budgets: boolean; enforced: number }>(off.c.child, "budgets:off"),
      ]);
      if (enforce && (!a.budgets || a.enforced < budgeted.length))
        throw new Error(`the enforcing gateway holds ${a.enforced} of ${budgeted.length} budgets`);
      if (b.budgets) throw new Error("budgets stayed on in the other gateway");
      const [on0, off0] = await Promise.all([
        ask<CpuUsage>(on.c.child, "cpu"),
        ask<CpuUsage>(off.c.child, "cpu"),
      ]);
      await Promise.all([
        sendAll(on.port, requests, n, plan.concurrency),
        sendAll(off.port, requests, n, plan.concurrency),
      ]);
      // Both record: each seals and sends what it holds, as a gateway does every interval.
      await Promise.all([ask(on.c.child, "seal"), ask(off.c.child, "seal")]);
      const [on1, off1] = await Promise.all([
        ask<CpuUsage>(on.c.child, "cpu"),
        ask<CpuUsage>(off.c.child, "cpu"),
      ]);
      const [tOn, tOff] = await Promise.all([
        ask<Timed>(on.c.child, "budgets:timings"),
        ask<Timed>(off.c.child, "budgets:timings"),
      ]);
      if (enforce) {
        timedCheck.push(tOn.checkNs);
        timedCharge.push(tOn.chargeNs);
        timedOn.push(tOn.checkNs + tOn.chargeNs);
        timedOff.push(tOff.checkNs + tOff.chargeNs);
      }
      const us = (x: CpuUsage, y: CpuUsage): number => (y.user + y.system - x.user - x.system) / n;
      return [us(on0, on1), us(off0, off1)];
    };
    const [a, b] = gateways as [G, G];
    const roles = (rep: number): [G, G] => (rep % 2 === 0 ? [a, b] : [b, a]);
    progress(S, `reference gateway: warm-up, then ${plan.reps} reps budgets on vs off`);
    await drive(plan.warmupRequests, a, b);
    await drive(plan.warmupRequests, b, a);
    timedOn.length = 0;
    timedOff.length = 0;
    timedCheck.length = 0;
    timedCharge.length = 0;
    const on: number[] = [];
    const off: number[] = [];
    const added: number[] = [];
    for (let rep = 0; rep < plan.reps; rep++) {
      const [x, y] = await drive(plan.requestsPerRep, ...roles(rep));
      on.push(x);
      off.push(y);
      added.push(x - y);
    }
    const nulls: number[] = [];
    for (let rep = 0; rep < plan.nullReps; rep++) {
      const [x, y] = await drive(plan.requestsPerRep, ...roles(rep), false);
      nulls.push(x - y);
    }
    const balanced = (byRep: number[]): number[] => {
      const out: number[] = [];
      for (let k = 0; k + 1 < byRep.length; k += 2)
        out.push(((byRep[k] as number) + (byRep[k + 1] as number)) / 2);
      return out;
    };
    return {
      budgets: budgeted.length,
      requestsPerRep: plan.requestsPerRep,
      offCpuUs: spread(off),
      onCpuUs: spread(on),
      addedUs: spread(balanced(added)),
      nullUs: spread(balanced(nulls)),
      timedOnNs: spread(timedOn),
      timedOffNs: spread(timedOff),
      timedCheckNs: spread(timedCheck),
      timedChargeNs: spread(timedCharge),
      timedAddedNs: spread(timedOn.map((x, k) => x - (timedOff[k] as number))),
    };
  } finally {
    await Promise.all(children.map((c) => stopChild(c)));
    await res.cleanPrefix(prefix);
    await res.dropDatabase(t);
  }
}

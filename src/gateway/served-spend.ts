import type { ModelDeployment } from "../config/config.js";
import {
  maxSpendPico,
  SpendEventError,
  validateSpendEvent,
  type SpendEvent,
} from "../produce/spend-event.js";
import type { ChargeList } from "../budget/budget-guard.js";
import type { ChargedEndpoint } from "./charge-check.js";
import type { CallOutcome } from "./gateway-metrics.js";
import { costOf, type Cost } from "./pricing.js";
import { counted, type RouteContext } from "./routes/context.js";
import type { KeyInfo } from "./virtual-keys.js";

/** Tokens a request used, as the model reported them or as counted. */
export interface Usage {
  promptTokens: number;
  completionTokens: number;
}

export interface ServedRequest {
  key: KeyInfo;
  /** What the request's cost counts against (budgets). */
  entities: ChargeList;
  deployment: ModelDeployment;
  endpoint: ChargedEndpoint;
  endUserId?: string;
  tags?: string[];
  startTime: number;
}

/** What settling a request did: its cost, and the refusal if its spend could not be recorded. */
export interface Settled {
  cost: Cost;
  refused?: SpendEventError;
}

/**
 * The spend of one served request, recorded exactly once whatever path ends
 * it (answered, streamed to the end, the client gone, the upstream broken):
 * the first settle() records, every later one is a no-op returning the same.
 */
export class ServedSpend {
  private settled: Settled | undefined;

  constructor(
    private readonly ctx: RouteContext,
    private readonly req: ServedRequest,
  ) {}

  get deployment(): ModelDeployment {
    return this.req.deployment;
  }

  get done(): boolean {
    return this.settled !== undefined;
  }

  /** The refusal settle() would meet for this usage, recording nothing (undefined: none). */
  wouldRefuse(usage: Usage): SpendEventError | undefined {
    const d = this.req.deployment;
    const charged = costOf(d.price, usage.promptTokens, usage.completionTokens);
    try {
      validateSpendEvent(this.event(usage, true, charged), this.ctx.config.limits);
      return undefined;
    } catch (err) {
      if (!(err instanceof SpendEventError)) throw err;
      return counted(this.ctx, err);
    }
  }

  /**
   * A call that produced nothing billable: recorded as a failed request at
   * the cost a provider bills for an error, zero (with the prompt's tokens
   * when known, for the daily rows).
   */
  failed(outcome: Exclude<CallOutcome, "answered">, promptTokens = 0): Settled {
    return this.settle({ promptTokens, completionTokens: 0 }, outcome, { pico: 0n, usd: "0" });
  }

  /**
   * Records the request's spend: only `answered` is a success. Without a
   * cost, the tokens at the deployment's prices.
   */
  settle(usage: Usage, outcome: CallOutcome, cost?: Cost): Settled {
    if (this.settled !== undefined) return this.settled;
    const { ctx, req } = this;
    const d = req.deployment;
    const success = outcome === "answered";
    ctx.gatewayStats.modelCalls.inc({ kind: d.kind, outcome });
    const charged = cost ?? costOf(d.price, usage.promptTokens, usage.completionTokens);
    const event = this.event(usage, success, charged);
    // recordServed() validates in its batch, after the request is answered. What
    // the checks before the model could not see (a cost past max_spend_usd_per_event,
    // a token count past the limit) is checked here, so a request whose spend the
    // producer would refuse is known as such, never dropped silently.
    const limits = ctx.config.limits;
    if (
      charged.pico > BigInt(maxSpendPico(limits)) ||
      usage.promptTokens > limits.maxTokens ||
      usage.completionTokens > limits.maxTokens
    ) {
      try {
        validateSpendEvent(event, limits);
      } catch (err) {
        if (!(err instanceof SpendEventError)) throw err;
        const refused = counted(ctx, err);
        ctx.logger.error(
          { reason: refused.reason, field: refused.field, model: d.name },
          "served request's spend refused by validation: not recorded",
        );
        this.settled = { cost: charged, refused };
        return this.settled;
      }
    }
    ctx.producer.recordServed(event);
    ctx.budgets?.charge(req.entities, charged.pico);
    this.settled = { cost: charged };
    return this.settled;
  }

  private event(usage: Usage, success: boolean, charged: Cost): SpendEvent {
    const req = this.req;
    const d = req.deployment;
    return {
      spend: charged.usd,
      apiKey: req.key.token,
      // null, not spread-in optional fields: one object shape for every request.
      userId: req.key.userId ?? null,
      teamId: req.key.teamId ?? null,
      organizationId: req.key.organizationId ?? null,
      endUserId: req.endUserId ?? null,
      tags: req.tags ?? null,
      model: d.model,
      modelGroup: d.name,
      provider: d.provider,
      endpoint: req.endpoint,
      promptTokens: usage.promptTokens,
      completionTokens: usage.completionTokens,
      success,
      startTime: req.startTime,
    };
  }
}

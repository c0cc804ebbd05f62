import { Counter, type Registry } from "prom-client";
import type { SpendMetrics } from "../observe/metrics.js";

/** How a call to a model ended (gateway_model_calls_total{outcome}); only `answered` is a success. */
export const CALL_OUTCOMES = [
  "answered",
  "client_left",
  "upstream_broke",
  "upstream_error",
  "upstream_timeout",
  "upstream_unreachable",
  "model_failed",
] as const;
export type CallOutcome = (typeof CALL_OUTCOMES)[number];

/** The gateway's own HTTP metrics (its producer's are produce/producer-metrics.ts). */
export class GatewayMetrics {
  readonly requests: Counter<"route" | "status">;
  readonly lookupsThrottled: Counter;
  readonly modelCalls: Counter<"kind" | "outcome">;

  constructor(registry: Registry) {
    const registers = [registry];
    this.requests = new Counter({
      name: "gateway_requests_total",
      help: "HTTP requests the gateway answered, by route and status code.",
      labelNames: ["route", "status"],
      registers,
    });
    this.lookupsThrottled = new Counter({
      name: "gateway_key_lookups_throttled_total",
      help: "Requests answered 503 because PostgreSQL lookups of keys in neither cache were past their rate (a flood of unknown keys).",
      registers,
    });
    this.modelCalls = new Counter({
      name: "gateway_model_calls_total",
      help: "Calls to a model (chat completions and embeddings), by kind (mock, upstream) and how they ended: answered, client_left (mid-stream), upstream_broke, upstream_error (relayed), upstream_timeout, upstream_unreachable, model_failed.",
      labelNames: ["kind", "outcome"],
      registers,
    });
    for (const kind of ["mock", "upstream"])
      for (const outcome of CALL_OUTCOMES) this.modelCalls.inc({ kind, outcome }, 0);
  }
}

/** This registry's gateway metrics (made on first use). */
export function gatewayMetrics(m: SpendMetrics): GatewayMetrics {
  return m.use("gateway", (r) => new GatewayMetrics(r));
}

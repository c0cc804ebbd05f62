import { Counter, type Registry } from "prom-client";
import type { SpendMetrics } from "../observe/metrics.js";

/** The gateway's own HTTP metrics (its producer's are produce/producer-metrics.ts). */
export class GatewayMetrics {
  readonly requests: Counter<"route" | "status">;
  readonly lookupsThrottled: Counter;

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
  }
}

/** This registry's gateway metrics (made on first use). */
export function gatewayMetrics(m: SpendMetrics): GatewayMetrics {
  return m.use("gateway", (r) => new GatewayMetrics(r));
}

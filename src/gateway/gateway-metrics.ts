import { Counter, Gauge, type Registry } from "prom-client";
import type { SpendMetrics } from "../observe/metrics.js";

/** How a call to a model ended (gateway_model_calls_total{outcome}); only `answered` is a success. */
export const CALL_OUTCOMES = [
  "answered",
  "client_left",
  "upstream_broke",
  "upstream_invalid",
  "upstream_error",
  "upstream_timeout",
  "upstream_unreachable",
  "model_failed",
] as const;
export type CallOutcome = (typeof CALL_OUTCOMES)[number];
/** Why a virtual key that exists was refused. */
export type KeyRefusal = "blocked" | "expired" | "model_not_allowed";

/** What became of a `POST /spend/events` that carried an `Idempotency-Key`. */
export type IdempotentOutcome =
  | "recorded"
  | "replayed"
  | "resumed"
  | "in_progress"
  | "key_reused"
  | "invalid_key"
  | "unavailable";

/** The gateway's own HTTP metrics (its producer's are produce/producer-metrics.ts). */
export class GatewayMetrics {
  readonly requests: Counter<"route" | "status">;
  readonly lookupsThrottled: Counter;
  readonly modelCalls: Counter<"kind" | "outcome">;
  readonly keyRefusals: Counter<"reason">;
  readonly keyChangesApplied: Counter;
  readonly idempotent: Counter<"outcome">;
  private keySyncAge: (() => number | undefined) | undefined;

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
      help: "Calls to a model (chat completions and embeddings), by kind (mock, upstream) and how they ended: answered, client_left (mid-stream), upstream_broke, upstream_invalid (an answer that is not the API's shape), upstream_error (relayed), upstream_timeout, upstream_unreachable, model_failed.",
      labelNames: ["kind", "outcome"],
      registers,
    });
    for (const kind of ["mock", "upstream"])
      for (const outcome of CALL_OUTCOMES) this.modelCalls.inc({ kind, outcome }, 0);
    this.keyRefusals = new Counter({
      name: "gateway_key_refusals_total",
      help: "Requests refused 401 for a key that exists, by reason: blocked, expired, model_not_allowed (the model is not in the key's models).",
      labelNames: ["reason"],
      registers,
    });
    this.keyChangesApplied = new Counter({
      name: "gateway_key_changes_applied_total",
      help: "Virtual keys dropped from this gateway's cache because a change to them was announced (block, unblock, update, delete).",
      registers,
    });
    this.idempotent = new Counter({
      name: "gateway_idempotent_ingest_total",
      help: "POST /spend/events requests with an Idempotency-Key, by outcome: recorded, replayed (answered from the first attempt), resumed (a crashed attempt finished), in_progress (409), key_reused (422), invalid_key (400), unavailable (503).",
      labelNames: ["outcome"],
      registers,
    });
    const age = (): number | undefined => this.keySyncAge?.();
    new Gauge({
      name: "gateway_key_sync_age_seconds",
      help: "Seconds since this gateway last read the announced key changes (healthy: under a quarter of key_sync_seconds). Past key_sync_seconds it re-reads keys from PostgreSQL instead.",
      registers,
      collect() {
        const v = age();
        if (v !== undefined) {
          this.set(v);
          return;
        }
        // No sample, not a made-up 0 (reset() alone leaves an unlabelled gauge at 0).
        this.reset();
        this.remove({});
      },
    });
  }

  /** Where gateway_key_sync_age_seconds is read from (undefined: no sample). */
  watchKeySync(age: () => number | undefined): void {
    this.keySyncAge = age;
  }
}

/** This registry's gateway metrics (made on first use). */
export function gatewayMetrics(m: SpendMetrics): GatewayMetrics {
  return m.use("gateway", (r) => new GatewayMetrics(r));
}

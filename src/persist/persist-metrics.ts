import { Counter, type Registry } from "prom-client";
import type { SpendMetrics } from "../observe/metrics.js";
import type { RetryReason } from "./retryable.js";

/** Where a retryable database failure was retried (bounded label values). */
export type RetryPath = "flush" | "direct";

const RETRY_REASONS: readonly RetryReason[] = [
  "deadlock",
  "serialization",
  "connection",
  "timeout",
  "lock",
];

/** What every writer to PostgreSQL reports: the flush, and producers with the buffer off. */
export class PersistMetrics {
  readonly transactionRetries: Counter<"reason" | "path">;

  constructor(registry: Registry, path: RetryPath) {
    this.transactionRetries = new Counter({
      name: "spend_transaction_retries_total",
      help: "Database transactions retried after a retryable failure, by reason (deadlock, serialization, connection, timeout, lock) and path (flush, direct).",
      labelNames: ["reason", "path"],
      registers: [registry],
    });
    for (const reason of RETRY_REASONS) this.transactionRetries.inc({ reason, path }, 0);
  }
}

/** This registry's database metrics, born at 0 for `path` (made on first use). */
export function persistMetrics(m: SpendMetrics, path: RetryPath): PersistMetrics {
  const set = m.use("persist", (r) => new PersistMetrics(r, path));
  for (const reason of RETRY_REASONS) set.transactionRetries.inc({ reason, path }, 0);
  return set;
}

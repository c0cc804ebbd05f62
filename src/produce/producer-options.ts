import type { AppConfig } from "../config/config.js";
import type { SpendSink } from "../contract/spend-sink.js";
import type { Logger } from "../observe/logger.js";
import type { SpendMetrics } from "../observe/metrics.js";
import type { Clock } from "./clock.js";
import type { ValidationLimits } from "./spend-event.js";

export interface ProducerOptions {
  /** Where sealed batches go: QueueSink (Redis buffer) or DirectSink (PostgreSQL). */
  sink: SpendSink;
  /**
   * Most milliseconds between seals of the buffer (LiteLLM's
   * proxy_batch_write_at): what a gateway killed without warning (SIGKILL,
   * OOM, a node lost) can lose, since what it has not sealed and sent is only
   * in its memory. Default: proxy_batch_write_at's.
   */
  flushIntervalMs?: number;
  /**
   * Each interval is shortened by up to this many milliseconds at random
   * (at most half of it), so gateways started together do not seal in
   * lockstep. Shortened, never lengthened: the interval stays the bound on
   * what a crash loses. Default: flush_jitter_seconds'.
   */
  flushJitterMs?: number;
  /**
   * Most distinct rows (entity + daily, buffered + sealed but not yet sent)
   * this process holds. At the bound, events that would add rows are refused
   * (BufferFullError, metric) instead of growing the heap without limit.
   * Default: max_buffered_rows'.
   */
  maxBufferedRows?: number;
  /** Most rows in one job, so one job stays small in Redis. Default: max_rows_per_job's. */
  maxRowsPerJob?: number;
  /** Longest close() waits for a sink that keeps failing. Default 30 000 ms. */
  closeTimeoutMs?: number;
  /**
   * Longest one send may take before it counts as failed and is retried (same
   * batch id, so a send that did land after all is not applied twice). A sink
   * waiting for a connection that never comes must not stall the producer.
   * Default 5 000 ms.
   */
  sendTimeoutMs?: number;
  /** What one event may carry. Default: the configuration's defaults (max_*_per_event). */
  limits?: ValidationLimits;
  /** Where its metrics go. Default: a registry of its own (`producer.metrics`). */
  metrics?: SpendMetrics;
  /** Default: silent (createSpendProducer gives one that is not). */
  logger?: Logger;
  /** Its timers and wall clock. Default: the system's; tests pass a manual one. */
  clock?: Clock;
  /** Stable id for this process's batches. Default: a random UUID. */
  producerId?: string;
  /**
   * Flush partitions: each row goes to the partition that owns it (a stable
   * hash of its identity). Must match the workers' setting. Default: flush_partitions'.
   */
  partitions?: number;
  /**
   * Back-pressure: while the oldest batch in the sink not yet committed is older than
   * this, `backlogged` is true (the gateway then refuses new requests with
   * 503 until the flush catches up). 0 or unset: off. Nothing recorded is
   * ever dropped because of it; it only tells callers to stop adding.
   * Default: backpressure_backlog_age_seconds'.
   */
  backpressureBacklogAgeMs?: number;
  /** How often the sink's backlog is read while back-pressure is on. Default 1 000 ms. */
  backlogCheckEveryMs?: number;
  /**
   * Why this producer must not take new spend now, or undefined: e.g. its
   * flush partition count no longer agrees with the workers' (its spend
   * would go where nobody drains it). A gateway refuses requests meanwhile.
   */
  halted?: () => string | undefined;
  /** Called at the end of close(), after the sink: closes what the producer's creator owns. */
  onClose?: () => Promise<void>;
  /**
   * Back-pressure before any worker has published a flush rate (a new
   * deployment, or one idle for a minute): the most rows every gateway
   * together may hold. The workers' max_rows_per_transaction: one
   * transaction's rows, which the flush commits and so measures. Default: its default.
   */
  heldRowsWithoutRate?: number;
}

/** The producer settings a configuration decides (everything but the sink and observers). */
export function producerSettings(
  config: AppConfig,
): Pick<
  ProducerOptions,
  | "flushIntervalMs"
  | "flushJitterMs"
  | "maxBufferedRows"
  | "maxRowsPerJob"
  | "limits"
  | "partitions"
  | "backpressureBacklogAgeMs"
  | "heldRowsWithoutRate"
> {
  return {
    flushIntervalMs: config.producer.flushIntervalMs,
    flushJitterMs: config.producer.flushJitterMs,
    maxBufferedRows: config.producer.maxBufferedRows,
    maxRowsPerJob: config.producer.maxRowsPerJob,
    limits: config.limits,
    partitions: config.partitions,
    backpressureBacklogAgeMs: config.producer.backpressureBacklogAgeMs,
    heldRowsWithoutRate: config.worker.maxRowsPerTransaction,
  };
}

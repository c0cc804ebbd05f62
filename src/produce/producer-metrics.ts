import { Counter, Gauge, Histogram, type Registry } from "prom-client";
import { ROWS_BUCKETS, type SpendMetrics } from "../observe/metrics.js";
import { REJECT_REASONS } from "./spend-event.js";

/** What a producer exposes for the in-memory gauges. */
export interface BufferStats {
  /** Distinct entity rows held: aggregated plus sealed but not yet delivered. */
  entityRows: number;
  /** Distinct daily rows held: aggregated plus sealed but not yet delivered. */
  dailyRows: number;
  /** Rows sealed into batches that the sink has not accepted yet (a subset of the above). */
  undeliveredRows: number;
  /** Sealed batches the sink has not accepted yet. */
  undeliveredBatches: number;
  /** Events accepted since the producer started (monotonic). */
  recordedEvents: number;
  /** 1 while the producer has back-pressure on. */
  backlogged: number;
}

/** Why a producer turned back-pressure on (spend_producer_backpressure_episodes_total{reason}). */
export const BACKPRESSURE_REASONS = ["backlog_age", "held_rows", "held_rows_no_rate"] as const;

/**
 * A seal's work is in proportion to its rows: well under a millisecond for a
 * few, up to seconds near max_buffered_rows (spread over slices of 2 ms).
 */
const SEAL_DURATION_BUCKETS = [
  0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5,
];

/** The producer's metrics, in every process that records spend (gateways). */
export class ProducerMetrics {
  private readonly buffers = new Set<() => BufferStats>();
  /** Events recorded by producers no longer watched, so the counter never goes back. */
  private retiredEvents = 0;
  readonly eventsRejected: Counter<"reason">;
  readonly enqueueFailures: Counter;
  readonly backpressureEpisodes: Counter<"reason">;
  readonly sealDuration: Histogram;
  readonly sealRows: Histogram;

  constructor(registry: Registry) {
    const registers = [registry];
    const sum = (pick: (s: BufferStats) => number): number => {
      let total = 0;
      for (const stats of this.buffers) total += pick(stats());
      return total;
    };
    const gauge = (name: string, help: string, pick: (s: BufferStats) => number): void => {
      new Gauge({
        name,
        help,
        registers,
        collect() {
          this.set(sum(pick));
        },
      });
    };
    gauge(
      "litellm_in_memory_spend_update_queue_size",
      "Distinct entity spend rows (keys, users, teams, members, orgs, end users, tags) aggregated in this process, not yet sent.",
      (s) => s.entityRows,
    );
    gauge(
      "litellm_in_memory_daily_spend_update_queue_size",
      "Distinct daily spend rows aggregated in this process, not yet sent.",
      (s) => s.dailyRows,
    );
    gauge(
      "spend_producer_undelivered_rows",
      "Rows sealed into batches that the sink (Redis or PostgreSQL) has not accepted yet; they are retried.",
      (s) => s.undeliveredRows,
    );
    gauge(
      "spend_producer_undelivered_batches",
      "Sealed batches that the sink has not accepted yet; they are retried with the same batch id.",
      (s) => s.undeliveredBatches,
    );
    gauge(
      "spend_producer_backpressure",
      "Producers in this process with back-pressure on (the gateway admits requests at a limited rate, or none, and answers the others 503): see spend_producer_backpressure_episodes_total for the rules.",
      (s) => s.backlogged,
    );
    const retired = (): number => this.retiredEvents;
    new Counter({
      name: "spend_events_recorded_total",
      help: "Spend events accepted by this process's producers (read from a plain count on scrape: no cost per event).",
      registers,
      collect() {
        this.reset();
        this.inc(retired() + sum((s) => s.recordedEvents));
      },
    });
    this.eventsRejected = new Counter({
      name: "spend_events_rejected_total",
      help: "Spend events refused at the producer or ingest boundary, by reason.",
      labelNames: ["reason"],
      registers,
    });
    // Every counter is born at 0 for each label value it can take, so
    // increase() sees the first event (a series starts at its first sample).
    for (const reason of [...REJECT_REASONS, "buffer_full"]) this.eventsRejected.inc({ reason }, 0);
    this.enqueueFailures = new Counter({
      name: "spend_producer_enqueue_failures_total",
      help: "Failed attempts to send a sealed batch to its sink (it is kept and retried).",
      registers,
    });
    this.backpressureEpisodes = new Counter({
      name: "spend_producer_backpressure_episodes_total",
      help: "Times a producer turned back-pressure on, by the rule that did: backlog_age (the oldest job not yet committed is past backpressure_backlog_age_seconds), held_rows (the rows gateways hold exceed half a seal interval of flush work), held_rows_no_rate (no flush rate published yet, and they hold more than max_rows_per_transaction).",
      labelNames: ["reason"],
      registers,
    });
    for (const reason of BACKPRESSURE_REASONS) this.backpressureEpisodes.inc({ reason }, 0);
    this.sealDuration = new Histogram({
      name: "spend_producer_seal_duration_seconds",
      help: "Synchronous work of one seal of a producer's buffer, summed over its slices (it yields to the event loop every 2 ms): the rows touched since the last seal drained and split into jobs (sending them is asynchronous and not counted).",
      buckets: SEAL_DURATION_BUCKETS,
      registers,
    });
    this.sealRows = new Histogram({
      name: "spend_producer_seal_rows",
      help: "Rows (entity rows + daily facts) one seal of a producer's buffer emitted.",
      buckets: ROWS_BUCKETS,
      registers,
    });
  }

  /** Adds a producer's buffer to the in-memory gauges; returns a function that removes it. */
  watchBuffer(stats: () => BufferStats): () => void {
    this.buffers.add(stats);
    return () => {
      if (this.buffers.delete(stats)) this.retiredEvents += stats().recordedEvents;
    };
  }
}

/** This registry's producer metrics (made on first use). */
export function producerMetrics(m: SpendMetrics): ProducerMetrics {
  return m.use("producer", (r) => new ProducerMetrics(r));
}

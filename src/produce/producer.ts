import { randomUUID } from "node:crypto";
import { performance } from "node:perf_hooks";
import type { AppConfig } from "../config/config.js";
import type { Logger } from "../observe/logger.js";
import { silentLogger } from "../observe/logger.js";
import { SpendMetrics } from "../observe/metrics.js";
import { producerMetrics, type ProducerMetrics } from "./producer-metrics.js";
import type { EntityKind } from "../contract/spend-batch.js";
import { Aggregator, rowBound } from "./aggregator.js";
import { CoarseClock } from "./coarse-clock.js";
import { dailyIdentity, entityIdentity, partitionOf } from "./partition.js";
import type { PipelineLoad, SealedBatch, SpendSink } from "../contract/spend-sink.js";
import {
  DEFAULT_LIMITS,
  SpendEventError,
  checkIdsContent,
  normalizeSpendEvent,
  type NormalizedEvent,
  type SpendEvent,
  type ValidationLimits,
} from "./spend-event.js";

// Served events validated and aggregated together (see recordServed): enough
// for the caches to stay warm across a batch, few enough that the memory
// bound's estimate of what they add (rowBound each) stays close.
const SERVED_BATCH = 256;

export interface ProducerOptions {
  /** Where sealed batches go: QueueSink (Redis buffer) or DirectSink (PostgreSQL). */
  sink: SpendSink;
  /**
   * Most milliseconds between seals of the buffer (LiteLLM's
   * proxy_batch_write_at): what a gateway killed without warning (SIGKILL,
   * OOM, a node lost) can lose, since what it has not sealed and sent is only
   * in its memory. Default 1 000.
   */
  flushIntervalMs?: number;
  /**
   * Each interval is shortened by up to this many milliseconds at random
   * (at most half of it), so gateways started together do not seal in
   * lockstep. Shortened, never lengthened: the interval stays the bound on
   * what a crash loses. Default 250.
   */
  flushJitterMs?: number;
  /**
   * Most distinct rows (entity + daily, buffered + sealed but not yet sent)
   * this process holds. At the bound, events that would add rows are refused
   * (BufferFullError, metric) instead of growing the heap without limit.
   * Default 200 000.
   */
  maxBufferedRows?: number;
  /** Most rows in one job, so one job stays small in Redis. Default 5 000. */
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
  limits?: ValidationLimits;
  metrics?: SpendMetrics;
  logger?: Logger;
  /** Stable id for this process's batches. Default: a random UUID. */
  producerId?: string;
  /**
   * Flush partitions: each row goes to the partition that owns it (a stable
   * hash of its identity). Must match the workers' setting. Default 1.
   */
  partitions?: number;
  /**
   * Back-pressure: while the oldest batch in the sink not yet committed is older than
   * this, `backlogged` is true (the gateway then refuses new requests with
   * 503 until the flush catches up). 0 or unset: off. Nothing recorded is
   * ever dropped because of it; it only tells callers to stop adding.
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
   * transaction's rows, which the flush commits and so measures. Default 20 000.
   */
  heldRowsWithoutRate?: number;
}

/** Which back-pressure rule holds (the label of spend_producer_backpressure_episodes_total). */
export type BackpressureReason = "backlog_age" | "held_rows" | "held_rows_no_rate";

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

export class BufferFullError extends Error {
  readonly code = "BUFFER_FULL";
  constructor(readonly maxBufferedRows: number) {
    super(
      `spend buffer full (${maxBufferedRows} rows): the sink is not keeping up or is unreachable`,
    );
    this.name = "BufferFullError";
  }
}

/** recordAll() refused a batch: every event it refused, by index. Nothing was recorded. */
export class BatchRefusedError extends Error {
  readonly code = "BATCH_REFUSED";
  constructor(
    readonly refused: readonly { index: number; error: SpendEventError }[],
    readonly size: number,
  ) {
    super(`${refused.length} of ${size} events refused: nothing was recorded`);
    this.name = "BatchRefusedError";
  }
}

export class CloseTimeoutError extends Error {
  readonly code = "CLOSE_TIMEOUT";
  constructor(
    readonly undeliveredBatches: number,
    readonly undeliveredRows: number,
  ) {
    super(
      `close() gave up: ${undeliveredBatches} batches (${undeliveredRows} rows) could not be delivered`,
    );
    this.name = "CloseTimeoutError";
  }
}

/**
 * Runs inside each gateway process. record() validates one request's spend
 * and adds it to an in-memory aggregate: O(1), no I/O. Every interval the
 * aggregate is sealed into batches with unique ids and sent to the sink; a
 * batch that fails to send is kept (same id) and retried, so delivery is
 * at-least-once and the batch id makes it apply once.
 */
export class SpendProducer {
  readonly producerId: string;
  /** Where sealed batches go (QueueSink or DirectSink). */
  readonly sink: SpendSink;
  private readonly haltedBy: (() => string | undefined) | undefined;
  private readonly onClose: (() => Promise<void>) | undefined;
  private readonly intervalMs: number;
  private readonly jitterMs: number;
  private readonly heldRowsWithoutRate: number;
  private readonly maxRows: number;
  private readonly maxRowsPerJob: number;
  private readonly closeTimeoutMs: number;
  private readonly sendTimeoutMs: number;
  private readonly limits: ValidationLimits;
  /** The registry its metrics are on (serve `metrics.registry` at /metrics). */
  readonly metrics: SpendMetrics;
  private readonly stats: ProducerMetrics;
  private readonly log: Logger;
  private readonly unwatch: () => void;
  private readonly partitions: number;

  private readonly agg = new Aggregator();
  private readonly clock = new CoarseClock();
  private pending: SealedBatch[] = [];
  /** recordServed()'s events, as given, not validated or aggregated yet. */
  private served: SpendEvent[] = [];
  /** The most rows the queued served events can add. */
  private servedRowBound = 0;
  private pendingRows = 0;
  private seq = 0;
  private timer: NodeJS.Timeout | undefined;
  private sending: Promise<void> | undefined;
  private closed = false;
  private fullSince = 0;
  private consecutiveFailures = 0;
  private recorded = 0;
  private behind = false;
  private backlogTimer: NodeJS.Timeout | undefined;

  constructor(opts: ProducerOptions) {
    this.sink = opts.sink;
    this.haltedBy = opts.halted;
    this.onClose = opts.onClose;
    this.intervalMs = opts.flushIntervalMs ?? 1_000;
    this.jitterMs = Math.min(opts.flushJitterMs ?? 250, (opts.flushIntervalMs ?? 1_000) / 2);
    this.heldRowsWithoutRate = opts.heldRowsWithoutRate ?? 20_000;
    this.maxRows = opts.maxBufferedRows ?? 200_000;
    this.maxRowsPerJob = opts.maxRowsPerJob ?? 5_000;
    this.closeTimeoutMs = opts.closeTimeoutMs ?? 30_000;
    this.sendTimeoutMs = opts.sendTimeoutMs ?? 5_000;
    this.limits = opts.limits ?? DEFAULT_LIMITS;
    this.metrics = opts.metrics ?? new SpendMetrics();
    this.stats = producerMetrics(this.metrics);
    this.log = opts.logger ?? silentLogger;
    this.producerId = opts.producerId ?? randomUUID();
    this.partitions = opts.partitions ?? 1;
    this.unwatch = this.stats.watchBuffer(() => {
      const rows = this.aggregate().pendingRowCounts();
      return {
        entityRows: rows.entity + this.pendingRowsOf("entity"),
        dailyRows: rows.daily + this.pendingRowsOf("daily"),
        undeliveredRows: this.pendingRows,
        undeliveredBatches: this.pending.length,
        recordedEvents: this.recorded,
        backlogged: this.behind ? 1 : 0,
      };
    });
    this.schedule();
    this.watchBacklog(opts.backpressureBacklogAgeMs ?? 0, opts.backlogCheckEveryMs ?? 1_000);
  }

  /**
   * True while the flush is behind by more than backpressure_backlog_age_seconds
   * (read from the sink every backlogCheckEveryMs). A gateway stops taking
   * new requests meanwhile: once the sink accepts spend faster than the
   * database commits it, every further event only adds to the backlog and to
   * staleness. O(1): a field read.
   */
  get backlogged(): boolean {
    return this.behind;
  }

  /** Why this producer must not take new spend now (see ProducerOptions.halted), or undefined. */
  get halted(): string | undefined {
    return this.haltedBy?.();
  }

  /**
   * Rows this producer will hand over that no queue shows yet: its estimate
   * of the next seal, and what is sealed but not sent (O(1)).
   */
  private get workRows(): number {
    return this.aggregate().pendingRowEstimate + this.pendingRows;
  }

  /**
   * Behind means either of:
   * - the oldest spend job not yet committed is older than the limit;
   * - the rows every gateway holds would take the flush, at the rate it last
   *   reported, longer than half a seal interval. Gateways seal on their own
   *   timers, so at any moment they hold half an interval's rows on average:
   *   past that, each interval brings more than the flush commits in one.
   *   Without this a fleet saw the backlog only when its seals landed, an
   *   interval late, and then handed the flush a wave of them at once.
   *   Until a worker has measured its rate, the gateways may hold one flush
   *   transaction's rows: a fleet that starts (or wakes) flat out otherwise
   *   records a whole interval unchecked, and its first seals arrive as one
   *   wave that takes the flush many intervals to commit. Handed over early,
   *   those rows are also what gives the worker its first rate.
   */
  private behindBecause(load: PipelineLoad, maxAgeMs: number): BackpressureReason | undefined {
    if (load.backlogAgeMs > maxAgeMs) return "backlog_age";
    if (load.flushRowsPerSec === null)
      return load.heldRows > this.heldRowsWithoutRate ? "held_rows_no_rate" : undefined;
    const secondsOfWork = load.heldRows / load.flushRowsPerSec;
    return secondsOfWork * 1000 > (this.intervalMs - this.jitterMs / 2) / 2
      ? "held_rows"
      : undefined;
  }

  private watchBacklog(maxAgeMs: number, everyMs: number): void {
    const readLoad = this.sink.pipelineLoad?.bind(this.sink);
    if (maxAgeMs <= 0 || readLoad === undefined) return;
    // A producer that stopped reporting drops out of the others' sums after this long.
    const freshMs = 3 * everyMs;
    const check = async (): Promise<void> => {
      let load: PipelineLoad;
      try {
        // A busy process answers late; a late answer is still the answer.
        load = await withTimeout(readLoad(this.producerId, this.workRows, freshMs), 10 * everyMs);
      } catch {
        // Backlog unknown (Redis slow or away): keep the last reading rather than
        // guess either way. Sends fail and retry on their own meanwhile.
        return;
      }
      const reason = this.behindBecause(load, maxAgeMs);
      const behind = reason !== undefined;
      if (behind !== this.behind) {
        if (reason !== undefined) {
          this.stats.backpressureEpisodes.inc({ reason });
          // The figures each rule weighs, so an operator seeing 503s can tell which held.
          this.log.warn(
            {
              reason,
              backlogAgeMs: load.backlogAgeMs,
              backlogAgeLimitMs: maxAgeMs,
              heldRows: load.heldRows,
              flushRowsPerSec: load.flushRowsPerSec,
            },
            "flush falling behind: back-pressure on until it catches up",
          );
        } else this.log.info("flush caught up: back-pressure off");
        this.behind = behind;
        // Hand over what is held now rather than at the next interval: the backlog
        // the gateways see then includes it, so they do not resume into a wave of
        // seals still on their way, and these rows wait in one queue, not two.
        if (behind) void this.flush().catch(() => undefined);
      }
    };
    const tick = (): void => {
      if (this.closed) return;
      this.backlogTimer = setTimeout(() => void check().finally(tick), everyMs);
      this.backlogTimer.unref();
    };
    tick();
  }

  /**
   * Records one request's spend. Throws SpendEventError (invalid event) or
   * BufferFullError (bound reached); either way nothing else is affected.
   */
  record(event: SpendEvent): void {
    this.take(event);
  }

  /**
   * Records every event of a batch, or none: all are validated before any is
   * recorded, so a client retrying a refused batch never counts part of it
   * twice. Throws BatchRefusedError naming every refused event, or
   * BufferFullError when the rows the batch may add (rowBound each) do not fit
   * under max_buffered_rows.
   */
  recordAll(events: readonly unknown[]): void {
    if (this.closed) throw new Error("producer is closed");
    const now = this.clock.read();
    const valid: NormalizedEvent[] = [];
    const refused: { index: number; error: SpendEventError }[] = [];
    let bound = 0;
    for (let i = 0; i < events.length; i++) {
      try {
        const e = normalizeSpendEvent(events[i], this.limits, now);
        checkIdsContent(e);
        valid.push(e);
        bound += rowBound(e.tags.length);
      } catch (err) {
        if (!(err instanceof SpendEventError)) throw err;
        this.countRejection(err);
        refused.push({ index: i, error: err });
      }
    }
    if (refused.length > 0) throw new BatchRefusedError(refused, events.length);
    if (this.heldRows + bound > this.maxRows) this.settleServed();
    if (this.heldRows + bound > this.maxRows) {
      this.stats.eventsRejected.inc({ reason: "buffer_full" }, valid.length);
      throw new BufferFullError(this.maxRows);
    }
    let addedRows = false;
    for (const e of valid) {
      if (!this.agg.addIfKnown(e)) {
        this.agg.add(e);
        addedRows = true;
      }
      this.recorded++;
    }
    if (addedRows) this.sealEarlyIfHalfFull();
  }

  /**
   * True when record() would refuse an event that adds rows (O(1)). A
   * gateway checks it before it serves a request, whose cost is incurred
   * once the model has answered.
   */
  get full(): boolean {
    if (this.heldRows < this.maxRows) return false;
    // Near the bound the queued served events count for what they add, not their bound.
    this.settleServed();
    return this.heldRows >= this.maxRows;
  }

  /**
   * Rows held, not only pending: rows kept from the last interval are memory
   * too. An upper bound while served events are queued (the most rows they
   * can add); exact after settleServed().
   */
  private get heldRows(): number {
    return this.agg.heldRowCount + this.pendingRows + this.servedRowBound;
  }

  /**
   * record() for a request already served: its cost is incurred, so it is
   * never refused for the memory bound. The bound is then passed by at most
   * the rows of the requests in flight when `full` turned true: admission
   * (`full`, `backlogged`) is where to refuse.
   *
   * It takes the event as given and returns: the producer keeps the object
   * (and its tags array) until its batch runs, so the caller must not change
   * either afterwards (a gateway builds one per request). The batch, of
   * SERVED_BATCH events or whatever is queued when anything reads the buffer
   * (a seal, the gauges, pendingSpendFor, the back-pressure check, `full`
   * near the bound), validates each event as record() does and aggregates it.
   * An event it refuses is counted in spend_events_rejected_total and logged
   * with its reason, not thrown: the request was served and there is nobody
   * to throw to, so a gateway checks what a request supplies before serving
   * it. Why not validate here: in a gateway each request's other work evicts
   * the producer's code from the CPU caches between two records, so code run
   * once per request costs many times what it costs in a batch; on the
   * reference gateway, validating (and copying) each event before returning
   * cost ~1.2 % of a request's CPU more than this (bench, A/B in both orders).
   * Its date, if it has no startTime, is the batch's (at most a few seconds
   * later; a batch runs at least once per seal interval).
   */
  recordServed(event: SpendEvent): void {
    if (this.closed) throw new Error("producer is closed");
    this.served.push(event);
    // The most rows it can add; exact once its batch has run.
    // Not validated yet: whatever it holds, even not an object.
    const tags = (event as unknown as { tags?: unknown } | null)?.tags;
    this.servedRowBound += rowBound(Array.isArray(tags) ? tags.length : 0);
    if (this.served.length >= SERVED_BATCH) this.settleServed();
  }

  /**
   * The aggregate with every queued served event in it: what anything that
   * reads it goes through (adding to it needs no such care).
   */
  private aggregate(): Aggregator {
    this.settleServed();
    return this.agg;
  }

  /** Validates and aggregates the queued served events; counts and logs those it refuses. */
  private settleServed(): void {
    const events = this.served;
    if (events.length === 0) return;
    // Swapped out first: a throw part way (a bug) must not add any event twice.
    this.served = [];
    this.servedRowBound = 0;
    let addedRows = false;
    const now = this.clock.read();
    for (let i = 0; i < events.length; i++) {
      try {
        const e = normalizeSpendEvent(events[i], this.limits, now);
        if (!this.agg.addIfKnown(e)) {
          checkIdsContent(e);
          this.agg.add(e);
          addedRows = true;
        }
      } catch (err) {
        if (!(err instanceof SpendEventError)) throw err;
        this.countRejection(err);
        this.log.error(
          { reason: err.reason, field: err.field, detail: err.message },
          "served request's spend refused by validation: not recorded",
        );
        continue;
      }
      this.recorded++;
    }
    if (addedRows) this.sealEarlyIfHalfFull();
  }

  private take(event: SpendEvent): void {
    if (this.closed) throw new Error("producer is closed");
    const e = this.normalize(event);
    // The common case: every row exists, so every id has been checked before.
    if (this.agg.addIfKnown(e)) {
      this.recorded++;
      return;
    }
    this.checkContent(e);
    if (this.heldRows >= this.maxRows) this.settleServed();
    if (this.heldRows >= this.maxRows) {
      this.stats.eventsRejected.inc({ reason: "buffer_full" });
      if (this.fullSince === 0) {
        this.fullSince = Date.now();
        this.log.error(
          { maxBufferedRows: this.maxRows },
          "spend buffer full: refusing events that add rows until the sink catches up",
        );
      }
      throw new BufferFullError(this.maxRows);
    }
    this.agg.add(e);
    this.recorded++;
    this.sealEarlyIfHalfFull();
  }

  /**
   * After rows were added. Half full: send now rather than wait for the
   * timer, so bursts rarely meet the bound. Not while the sink is failing:
   * the timer's backoff retries then, and sealing on every event would shred
   * the buffer into tiny batches.
   */
  private sealEarlyIfHalfFull(): void {
    if (
      this.heldRows >= this.maxRows / 2 &&
      this.sending === undefined &&
      this.consecutiveFailures === 0
    ) {
      void this.flush().catch(() => undefined);
    }
  }

  private normalize(event: SpendEvent): NormalizedEvent {
    try {
      return normalizeSpendEvent(event, this.limits, this.clock.read());
    } catch (err) {
      this.countRejection(err);
      throw err;
    }
  }

  private checkContent(e: NormalizedEvent): void {
    try {
      checkIdsContent(e);
    } catch (err) {
      this.countRejection(err);
      throw err;
    }
  }

  private countRejection(err: unknown): void {
    if (err instanceof SpendEventError) this.stats.eventsRejected.inc({ reason: err.reason });
  }

  /** Distinct rows with undelivered spend: aggregated, or sealed but not sent (O(rows held)). */
  get bufferedRows(): number {
    const rows = this.aggregate().pendingRowCounts();
    return rows.entity + rows.daily + this.pendingRows;
  }

  /** Sealed batches still waiting to be delivered. */
  get undeliveredBatches(): number {
    return this.pending.length;
  }

  /**
   * Picodollars this process holds for one entity row and has not handed to
   * the sink yet: aggregated, and sealed but undelivered (read-only,
   * O(1) + O(undelivered rows)). For team_member, `id` is the user and `id2`
   * the team (omitted: every team). A batch whose send is in flight still
   * counts here until the sink acknowledges it.
   */
  pendingSpendFor(kind: EntityKind, id: string, id2?: string): bigint {
    const d = this.pendingSpendDetail(kind, id, id2);
    let sum = d.bufferedPico;
    for (const pico of d.batches.values()) sum += pico;
    return sum;
  }

  /**
   * pendingSpendFor, split: still aggregated, and per sealed-but-undelivered
   * batch id; `sealedLater(batchId)` tells a batch this producer seals after
   * this call (its spend was in `bufferedPico` then), so a reader does not
   * count it again when it meets it in Redis.
   */
  pendingSpendDetail(
    kind: EntityKind,
    id: string,
    id2?: string,
  ): {
    bufferedPico: bigint;
    batches: Map<string, bigint>;
    sealedLater: (batchId: string) => boolean;
  } {
    const bufferedPico = this.aggregate().entitySpendFor(kind, id, id2);
    const seq = this.seq;
    const prefix = `${this.producerId}.`;
    const sealedLater = (batchId: string): boolean =>
      batchId.startsWith(prefix) && Number(batchId.slice(prefix.length)) > seq;
    const batches = new Map<string, bigint>();
    for (const b of this.pending) {
      if (b.kind !== "entity") continue;
      let sum = 0n;
      for (const [k, i, i2, pico] of b.rows)
        if (k === kind && i === id && (id2 === undefined || i2 === id2)) sum += BigInt(pico);
      if (sum > 0n) batches.set(b.batchId, sum);
    }
    return { bufferedPico, batches, sealedLater };
  }

  /**
   * Seals the buffer and sends every pending batch, in order. Rejects if a
   * batch could not be sent (it stays pending and the timer retries it).
   */
  async flush(): Promise<void> {
    this.seal();
    // One sender at a time: batches leave in order and are never sent twice at once.
    while (this.sending !== undefined) await this.sending.catch(() => undefined);
    if (this.pending.length === 0) return;
    this.sending = this.sendPending();
    try {
      await this.sending;
    } finally {
      this.sending = undefined;
    }
  }

  /** Stops the timer and delivers everything buffered; rejects with CloseTimeoutError if it cannot. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.timer !== undefined) clearTimeout(this.timer);
    if (this.backlogTimer !== undefined) clearTimeout(this.backlogTimer);
    this.behind = false;
    this.clock.stop();
    const deadline = Date.now() + this.closeTimeoutMs;
    let gaveUp = false;
    const deliver = async (): Promise<void> => {
      for (let attempt = 0; !gaveUp; attempt++) {
        try {
          await this.flush();
          return;
        } catch {
          if (Date.now() >= deadline) return;
          await sleep(Math.min(100 * 2 ** attempt, 2_000, Math.max(0, deadline - Date.now())));
        }
      }
    };
    try {
      // The deadline bounds the whole close, a send already in flight included
      // (one waiting for a connection that never comes takes sendTimeoutMs).
      await withTimeout(deliver(), this.closeTimeoutMs).catch(() => undefined);
      gaveUp = true;
      if (this.pending.length > 0 || this.agg.hasPending) {
        this.seal();
        this.log.error(
          { batches: this.pending.length, rows: this.pendingRows },
          "close: spend not delivered",
        );
        throw new CloseTimeoutError(this.pending.length, this.pendingRows);
      }
    } finally {
      this.unwatch();
      try {
        await this.sink.close();
      } finally {
        await this.onClose?.();
      }
    }
  }

  /**
   * Synchronous and O(rows touched since the last seal): its duration is
   * how long it holds the gateway's event loop (spend_producer_seal_duration_seconds).
   */
  private seal(): void {
    const t0 = performance.now();
    const agg = this.aggregate();
    if (!agg.hasPending) return;
    const { entity, daily } = agg.drain();
    const sealedAt = Date.now();
    const header = { producerId: this.producerId, sealedAt, partitions: this.partitions };
    for (const [partition, rows] of this.jobsOf(entity, entityIdentity))
      this.queueBatch({ kind: "entity", batchId: this.nextBatchId(), partition, rows, ...header });
    for (const [partition, rows] of this.jobsOf(daily, dailyIdentity))
      this.queueBatch({ kind: "daily", batchId: this.nextBatchId(), partition, rows, ...header });
    this.stats.sealDuration.observe((performance.now() - t0) / 1000);
    this.stats.sealRows.observe(entity.length + daily.length);
  }

  private queueBatch(batch: SealedBatch): void {
    this.pending.push(batch);
    this.pendingRows += batch.rows.length;
  }

  /** Rows split by partition, then into jobs of at most max_rows_per_job. */
  private *jobsOf<R>(rows: R[], identity: (r: R) => string): Generator<[number, R[]]> {
    for (const [partition, all] of this.byPartition(rows, identity))
      for (let i = 0; i < all.length; i += this.maxRowsPerJob)
        yield [partition, all.slice(i, i + this.maxRowsPerJob)];
  }

  /** Splits rows by the flush partition that owns each one (all in 0 when unpartitioned). */
  private byPartition<R>(rows: R[], identity: (r: R) => string): Map<number, R[]> {
    const out = new Map<number, R[]>();
    if (this.partitions <= 1) {
      if (rows.length > 0) out.set(0, rows);
      return out;
    }
    for (const r of rows) {
      const p = partitionOf(identity(r), this.partitions);
      const list = out.get(p);
      if (list === undefined) out.set(p, [r]);
      else list.push(r);
    }
    return out;
  }

  private async sendPending(): Promise<void> {
    while (this.pending.length > 0) {
      const batch = this.pending[0] as SealedBatch;
      try {
        await withTimeout(this.sink.write(batch), this.sendTimeoutMs);
      } catch (err) {
        this.stats.enqueueFailures.inc();
        this.consecutiveFailures++;
        // One line per outage, not one per retry.
        if (this.consecutiveFailures === 1) {
          this.log.warn(
            { err: (err as Error).message, batchId: batch.batchId },
            "spend batch not delivered; keeping it and retrying",
          );
        }
        throw err;
      }
      this.pending.shift();
      this.pendingRows -= batch.rows.length;
      if (this.consecutiveFailures > 0) {
        this.log.info({ failures: this.consecutiveFailures }, "spend delivery recovered");
        this.consecutiveFailures = 0;
      }
    }
    if (this.fullSince !== 0) {
      this.log.info({ fullForMs: Date.now() - this.fullSince }, "spend buffer has room again");
      this.fullSince = 0;
    }
  }

  private schedule(): void {
    if (this.closed) return;
    // After failures, retry sooner than a full interval but back off.
    const base =
      this.consecutiveFailures > 0
        ? Math.min(this.intervalMs, 250 * 2 ** Math.min(this.consecutiveFailures, 6))
        : this.intervalMs;
    const delay =
      base - Math.floor(Math.random() * (this.consecutiveFailures > 0 ? 0 : this.jitterMs));
    this.timer = setTimeout(() => {
      void this.flush()
        .catch(() => undefined)
        .finally(() => this.schedule());
    }, delay);
    // A gateway's exit is decided by the gateway, not by our timer.
    this.timer.unref();
  }

  private nextBatchId(): string {
    // BullMQ job ids may not contain ":".
    return `${this.producerId}.${++this.seq}`;
  }

  private pendingRowsOf(kind: SealedBatch["kind"]): number {
    let n = 0;
    for (const b of this.pending) if (b.kind === kind) n += b.rows.length;
    return n;
  }
}

function withTimeout<T>(p: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`send timed out after ${ms} ms`)), ms);
  });
  // The losing write may still settle later; its outcome no longer matters.
  p.catch(() => undefined);
  return Promise.race([p, timeout]).finally(() => clearTimeout(timer));
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

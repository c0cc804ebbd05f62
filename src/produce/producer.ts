import { randomUUID } from "node:crypto";
import { performance } from "node:perf_hooks";
import { setImmediate as nextTurn } from "node:timers/promises";
import { DEFAULT_CONFIG } from "../config/config.js";
import type { EntityKind } from "../contract/spend-batch.js";
import { decodeEntityRows } from "../contract/row-text.js";
import type { SpendSink } from "../contract/spend-sink.js";
import type { Logger } from "../observe/logger.js";
import { silentLogger } from "../observe/logger.js";
import { SpendMetrics } from "../observe/metrics.js";
import { Aggregator, rowBound } from "./aggregator.js";
import { Backpressure } from "./backpressure.js";
import { sleep, systemClock, withTimeout, type Clock, type TimerHandle } from "./clock.js";
import { CoarseClock } from "./coarse-clock.js";
import { Delivery } from "./delivery.js";
import {
  BatchRefusedError,
  BufferFullError,
  CloseTimeoutError,
  ProducerClosedError,
} from "./errors.js";
import type { ProducerOptions } from "./producer-options.js";
import { producerMetrics, type ProducerMetrics } from "./producer-metrics.js";
import { JobWriter, numberBatches, type UnnumberedBatch } from "./sealer.js";
import {
  DEFAULT_LIMITS,
  SpendEventError,
  checkIdsContent,
  normalizeSpendEvent,
  type NormalizedEvent,
  type SpendEvent,
  type ValidationLimits,
} from "./spend-event.js";

export { BatchRefusedError, BufferFullError, CloseTimeoutError, ProducerClosedError };
export { producerSettings, type ProducerOptions } from "./producer-options.js";
export type { BackpressureReason } from "./backpressure.js";

// Served events validated and aggregated together (see recordServed): enough
// for the caches to stay warm across a batch, few enough that the memory
// bound's estimate of what they add (rowBound each) stays close.
const SERVED_BATCH = 256;

const DEFAULTS = DEFAULT_CONFIG.producer;

// Longest one slice of a seal may hold the event loop before it yields, ms
// (issue 22: a seal at max_buffered_rows used to hold it for ~0.3 s at once).
const SEAL_SLICE_MS = 1;

/** A seal under way: the aggregator it drains (no longer recorded into), in steps. */
interface Drain {
  agg: Aggregator;
  /** What its steps have drained so far. */
  out: JobWriter;
  steps: Generator<void, void>;
  sealedAt: number;
  rows: number;
  /** Of its jobs, those already numbered and queued for delivery: rows (or facts), and rows the flush writes. */
  queuedRows: number;
  queuedFlushRows: number;
  /** Events the drained aggregator held. */
  events: number;
  /** Its synchronous work so far, ms (the seal duration metric). */
  busyMs: number;
  finished: boolean;
}

/**
 * Runs inside each gateway process. record() validates one request's spend
 * and adds it to an in-memory aggregate: O(1), no I/O. Every interval the
 * aggregate is sealed into batches with unique ids (sealer.ts) and handed to
 * the sink in order (delivery.ts); a batch that fails to send is kept (same
 * id) and retried, so delivery is at least once and the batch id makes it
 * apply once. Back-pressure (backpressure.ts) tells the gateway when to stop
 * taking requests. Admission (`full`, `backlogged`, `halted`) is O(1).
 */
export class SpendProducer {
  readonly producerId: string;
  /** Where sealed batches go (QueueSink or DirectSink). */
  readonly sink: SpendSink;
  /** The registry its metrics are on (serve `metrics.registry` at /metrics). */
  readonly metrics: SpendMetrics;
  private readonly haltedBy: (() => string | undefined) | undefined;
  private readonly onClose: (() => Promise<void>) | undefined;
  private readonly intervalMs: number;
  private readonly jitterMs: number;
  private readonly maxRows: number;
  private readonly maxRowsPerJob: number;
  private readonly closeTimeoutMs: number;
  private readonly limits: ValidationLimits;
  private readonly stats: ProducerMetrics;
  private readonly log: Logger;
  private readonly unwatch: () => void;
  private readonly partitions: number;
  private readonly clock: Clock;
  private readonly delivery: Delivery;
  private readonly backpressure: Backpressure | undefined;

  /**
   * Two aggregators take turns: events go to `agg`, and a seal swaps it with
   * `spare` (O(1)) and drains the old one in slices across turns of the event
   * loop, while events go on into the other. Each keeps its rows across its
   * drains (zeroed, dropped only when idle for its whole interval), so in
   * steady state a request finds its rows and allocates nothing.
   */
  private agg = new Aggregator();
  private spare = new Aggregator();
  /** The seal under way, if any. */
  private drain: Drain | undefined;
  /**
   * The last seal finished, kept only so that a Drain is always alive: V8
   * drops a hidden class no object has, and with it the optimized code of
   * sealSliced, compiled again at every seal (see JobWriter in sealer.ts).
   */
  private lastDrain: Drain | undefined;
  /** Writes every seal's jobs (one at a time), its buffers and hidden classes kept warm. */
  private readonly writer: JobWriter;
  /** Seals run one after another: each waits for the one before. */
  private sealQueue: Promise<void> = Promise.resolve();
  private sealsQueued = 0;
  /** Event dates: the wall clock, read cheaply (coarse-clock.ts). */
  private readonly eventClock: CoarseClock;
  /** recordServed()'s events, as given, not validated or aggregated yet. */
  private served: SpendEvent[] = [];
  /** The most rows the queued served events can add. */
  private servedRowBound = 0;
  private seq = 0;
  private timer: TimerHandle | undefined;
  private closed = false;
  private fullSince = 0;
  private recorded = 0;
  /** Rows a seal hands over per event it holds, smoothed over seals (back-pressure's rate). */
  private rowsPerEvent = 5;

  constructor(opts: ProducerOptions) {
    this.sink = opts.sink;
    this.haltedBy = opts.halted;
    this.onClose = opts.onClose;
    this.clock = opts.clock ?? systemClock;
    this.eventClock = new CoarseClock(this.clock);
    this.intervalMs = opts.flushIntervalMs ?? DEFAULTS.flushIntervalMs;
    this.jitterMs = Math.min(opts.flushJitterMs ?? DEFAULTS.flushJitterMs, this.intervalMs / 2);
    this.maxRows = opts.maxBufferedRows ?? DEFAULTS.maxBufferedRows;
    this.maxRowsPerJob = opts.maxRowsPerJob ?? DEFAULTS.maxRowsPerJob;
    this.closeTimeoutMs = opts.closeTimeoutMs ?? 30_000;
    this.limits = opts.limits ?? DEFAULT_LIMITS;
    this.metrics = opts.metrics ?? new SpendMetrics();
    this.stats = producerMetrics(this.metrics);
    this.log = opts.logger ?? silentLogger;
    this.producerId = opts.producerId ?? randomUUID();
    this.partitions = opts.partitions ?? DEFAULT_CONFIG.partitions;
    this.writer = new JobWriter(this.partitions, this.maxRowsPerJob);
    this.delivery = new Delivery(
      this.sink,
      opts.sendTimeoutMs ?? 5_000,
      this.clock,
      this.log,
      this.stats,
    );
    this.unwatch = this.stats.watchBuffer(() => {
      const rows = this.unsentRowCounts();
      return {
        entityRows: rows.entity + this.delivery.rowsOf("entity"),
        dailyRows: rows.daily + this.delivery.rowsOf("daily"),
        undeliveredRows: this.delivery.pendingRows,
        undeliveredBatches: this.delivery.pending.length,
        recordedEvents: this.recorded,
        backlogged: this.backpressure?.on === true ? 1 : 0,
      };
    });
    const maxBacklogAgeMs = opts.backpressureBacklogAgeMs ?? DEFAULTS.backpressureBacklogAgeMs;
    const readLoad = this.sink.pipelineLoad?.bind(this.sink);
    if (maxBacklogAgeMs > 0 && readLoad !== undefined) {
      this.backpressure = new Backpressure(
        readLoad,
        this.producerId,
        () =>
          this.aggregate().pendingRowEstimate +
          // A seal's queued jobs are in delivery's count already.
          Math.max(0, (this.drain?.rows ?? 0) - (this.drain?.queuedFlushRows ?? 0)) +
          this.delivery.pendingFlushRows,
        () => this.rowsPerEvent,
        {
          maxBacklogAgeMs,
          intervalMs: this.intervalMs,
          jitterMs: this.jitterMs,
          heldRowsWithoutRate:
            opts.heldRowsWithoutRate ?? DEFAULT_CONFIG.worker.maxRowsPerTransaction,
        },
        opts.backlogCheckEveryMs ?? 1_000,
        this.clock,
        () => this.eventClock.read(),
        this.log,
        this.stats,
        () => this.flush(),
      );
      this.backpressure.start();
    }
    this.schedule();
  }

  /**
   * Whether to refuse this request because the flush is behind: an
   * admission decision, read once per request. While the pipeline is within
   * its limits (backpressure_backlog_age_seconds, and the rows every gateway
   * holds within half a seal interval of flush work) it is false. Past them
   * the producer admits requests at a rate that falls in proportion to how
   * far behind the flush is, from its share of the flush rate down to a
   * floor of a quarter of it, and none at five times the limits with no
   * worker committing (backpressure.ts): each read that finds no token
   * left is true, and the gateway answers that request 503. So a gateway
   * slows down rather than stopping while the flush keeps up: once the sink
   * accepts spend faster than the database commits it, every further event
   * only adds to the backlog and to staleness. O(1): a token bucket.
   */
  get backlogged(): boolean {
    const bp = this.backpressure;
    return bp !== undefined && !bp.admit();
  }

  /**
   * Requests per second back-pressure admits now: Infinity while it is off,
   * 0 while it admits none (read-only, unlike `backlogged`).
   */
  get admittedPerSecond(): number {
    return this.backpressure?.admittedPerSecond ?? Number.POSITIVE_INFINITY;
  }

  /** Why this producer must not take new spend now (see ProducerOptions.halted), or undefined. */
  get halted(): string | undefined {
    return this.haltedBy?.();
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
    if (this.closed) throw new ProducerClosedError();
    const now = this.eventClock.read();
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
    return (
      this.agg.heldRowCount +
      this.spare.heldRowCount +
      this.delivery.pendingRows +
      this.servedRowBound
    );
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
   * once per request costs many times what it costs in a batch (the
   * benchmark's gateway section measured validating each event before
   * returning against this, both orders).
   * Its date, if it has no startTime, is the batch's (at most a few seconds
   * later; a batch runs at least once per seal interval).
   */
  recordServed(event: SpendEvent): void {
    if (this.closed) throw new ProducerClosedError();
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
    const now = this.eventClock.read();
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
    if (this.closed) throw new ProducerClosedError();
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
        this.fullSince = this.clock.now();
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
      this.sealsQueued === 0 &&
      !this.delivery.busy &&
      this.delivery.consecutiveFailures === 0
    ) {
      void this.flush().catch(() => undefined);
    }
  }

  private normalize(event: SpendEvent): NormalizedEvent {
    try {
      return normalizeSpendEvent(event, this.limits, this.eventClock.read());
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
    const rows = this.unsentRowCounts();
    return rows.entity + rows.daily + this.delivery.pendingRows;
  }

  /**
   * Distinct rows aggregated and not yet handed to delivery: the recording
   * aggregator's, and a seal's under way. O(rows held), for scrapes and
   * tests; it does not wait for the seal (the rows it has drained so far
   * are counted from its output, the rest from the aggregator).
   */
  private unsentRowCounts(): { entity: number; daily: number } {
    const rows = this.aggregate().pendingRowCounts();
    const d = this.drain;
    if (d !== undefined) {
      const left = d.agg.pendingRowCounts();
      // A row is emitted as it is zeroed, and is then no longer pending there.
      rows.entity += d.out.entityRows + left.entity;
      rows.daily += d.out.dailyRows + left.daily;
    }
    return rows;
  }

  /** Sealed batches still waiting to be delivered. */
  get undeliveredBatches(): number {
    return this.delivery.pending.length;
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
    // A seal under way is finished first, so its rows are in delivery's batches, counted once.
    this.finishDrain();
    const bufferedPico = this.aggregate().entitySpendFor(kind, id, id2);
    const seq = this.seq;
    const prefix = `${this.producerId}.`;
    const sealedLater = (batchId: string): boolean =>
      batchId.startsWith(prefix) && Number(batchId.slice(prefix.length)) > seq;
    const batches = new Map<string, bigint>();
    for (const b of this.delivery.pending) {
      if (b.kind !== "entity") continue;
      let sum = 0n;
      // Read back from the batch's text: a rare read (live spend), and the text is all a batch keeps.
      for (const [k, i, i2, pico] of decodeEntityRows(b.rowText))
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
    await this.seal();
    await this.delivery.sendAll();
    if (this.fullSince !== 0 && this.delivery.pending.length === 0) {
      this.log.info(
        { fullForMs: this.clock.now() - this.fullSince },
        "spend buffer has room again",
      );
      this.fullSince = 0;
    }
  }

  /** Stops the timers and delivers everything buffered; rejects with CloseTimeoutError if it cannot. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.clock.clearTimeout(this.timer);
    this.backpressure?.stop();
    this.eventClock.stop();
    const deadline = this.clock.now() + this.closeTimeoutMs;
    let gaveUp = false;
    const deliver = async (): Promise<void> => {
      for (let attempt = 0; !gaveUp; attempt++) {
        try {
          await this.flush();
          return;
        } catch {
          if (this.clock.now() >= deadline) return;
          await sleep(
            this.clock,
            Math.min(100 * 2 ** attempt, 2_000, Math.max(0, deadline - this.clock.now())),
          );
        }
      }
    };
    try {
      // The deadline bounds the whole close, a send already in flight included
      // (one waiting for a connection that never comes takes sendTimeoutMs).
      await withTimeout(this.clock, deliver(), this.closeTimeoutMs, "close").catch(() => undefined);
      gaveUp = true;
      if (this.delivery.pending.length > 0 || this.agg.hasPending || this.drain !== undefined) {
        this.sealNow();
        this.log.error(
          { batches: this.delivery.pending.length, rows: this.delivery.pendingRows },
          "close: spend not delivered",
        );
        throw new CloseTimeoutError(this.delivery.pending.length, this.delivery.pendingRows);
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
   * Seals what was recorded before the call: waits for a seal under way,
   * then flips the aggregators (O(1)) and drains the old one in slices of
   * at most SEAL_SLICE_MS, yielding to the event loop between them, so a seal
   * of any size never holds a gateway's event loop for long. Events recorded
   * meanwhile go into the other aggregator: they are in the next seal, once.
   */
  private seal(): Promise<void> {
    this.sealsQueued++;
    const run = this.sealQueue.then(async () => {
      try {
        await this.sealSliced();
      } finally {
        this.sealsQueued--;
      }
    });
    this.sealQueue = run.catch(() => undefined);
    return run;
  }

  private async sealSliced(): Promise<void> {
    // Finished synchronously by another path (close's last seal) while this waited.
    this.finishDrain();
    const d = this.flip();
    if (d === undefined) return;
    for (;;) {
      if (d.finished) return;
      const t0 = performance.now();
      let r = d.steps.next();
      // At least one step per slice, then as many as fit in the slice.
      while (r.done !== true && performance.now() - t0 < SEAL_SLICE_MS) r = d.steps.next();
      d.busyMs += performance.now() - t0;
      if (r.done === true) {
        this.complete(d);
        return;
      }
      // Full jobs leave now, while the seal goes on: each job's text then
      // lives until its own send, not until the whole seal is sent. Held to
      // the end, every job of a 200k-row seal sat in the young generation,
      // and the scavenges its sending set off copied them all (17-25 ms
      // pauses with Redis), on the event loop.
      this.queueJobs(d, d.out.takeClosed());
      this.delivery.kick();
      await nextTurn();
    }
  }

  /** Swaps the aggregators and starts draining the old one; undefined if it has nothing. */
  private flip(): Drain | undefined {
    const old = this.aggregate();
    if (!old.hasPending) return undefined;
    this.agg = this.spare;
    this.spare = old;
    const out = this.writer;
    const d: Drain = {
      agg: old,
      out,
      // The aggregator's own generator, not one wrapping it: a closure made per
      // seal took TurboFan ~45 ms to compile, on the event loop's core when pinned.
      steps: old.drainSteps(out),
      sealedAt: this.clock.now(),
      rows: old.pendingRowEstimate,
      queuedRows: 0,
      queuedFlushRows: 0,
      events: old.eventCount,
      busyMs: 0,
      finished: false,
    };
    this.drain = d;
    return d;
  }

  /** The seal under way, finished now, synchronously (reads that must see it whole). */
  private finishDrain(): void {
    const d = this.drain;
    if (d === undefined || d.finished) return;
    const t0 = performance.now();
    let r = d.steps.next();
    while (r.done !== true) r = d.steps.next();
    d.busyMs += performance.now() - t0;
    this.complete(d);
  }

  /** Everything recorded, sealed now and synchronously (close's last word when it gives up). */
  private sealNow(): void {
    this.finishDrain();
    this.flip();
    this.finishDrain();
  }

  /** A drained seal's last jobs numbered and queued for delivery, in order. */
  private complete(d: Drain): void {
    this.queueJobs(d, d.out.finish());
    d.finished = true;
    if (this.drain === d) this.drain = undefined;
    this.lastDrain = d;
    this.stats.sealDuration.observe(d.busyMs / 1000);
    this.stats.sealRows.observe(d.queuedRows);
    // In the flush's rows (facts fanned out), which is what its rate is measured in.
    if (d.events > 0)
      this.rowsPerEvent = 0.7 * this.rowsPerEvent + (0.3 * d.queuedFlushRows) / d.events;
  }

  /** Jobs of seal d numbered (batch ids in order) and queued for delivery. */
  private queueJobs(d: Drain, jobs: UnnumberedBatch[]): void {
    if (jobs.length === 0) return;
    const header = {
      producerId: this.producerId,
      sealedAt: d.sealedAt,
      partitions: this.partitions,
    };
    for (const batch of numberBatches(jobs, header, () => this.nextBatchId())) {
      this.delivery.queue(batch);
      d.queuedRows += batch.rowCount;
      d.queuedFlushRows += batch.flushRows;
    }
  }

  /**
   * The seal timer: every interval, shortened at random by up to the jitter;
   * after failed sends, sooner than an interval, backing off.
   */
  private schedule(): void {
    if (this.closed) return;
    const failures = this.delivery.consecutiveFailures;
    const delay =
      failures > 0
        ? Math.min(this.intervalMs, 250 * 2 ** Math.min(failures, 6))
        : this.intervalMs - Math.floor(Math.random() * this.jitterMs);
    this.timer = this.clock.setTimeout(
      () =>
        this.flush()
          .catch(() => undefined)
          .finally(() => this.schedule()),
      delay,
    );
  }

  private nextBatchId(): string {
    // BullMQ job ids may not contain ":".
    return `${this.producerId}.${++this.seq}`;
  }
}

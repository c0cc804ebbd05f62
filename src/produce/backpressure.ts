import type { PipelineLoad } from "../contract/spend-sink.js";
import type { Logger } from "../observe/logger.js";
import { withTimeout, type Clock, type TimerHandle } from "./clock.js";
import type { ProducerMetrics } from "./producer-metrics.js";

/** Which back-pressure rule holds (the label of spend_producer_backpressure_episodes_total). */
export type BackpressureReason = "backlog_age" | "held_rows" | "held_rows_no_rate";

export interface BackpressureRules {
  /** The oldest spend job not yet committed may be this old (backpressure_backlog_age_seconds). */
  maxBacklogAgeMs: number;
  /** The producers' seal interval and its jitter (which shortens it). */
  intervalMs: number;
  jitterMs: number;
  /** What every gateway together may hold before any flush rate is known. */
  heldRowsWithoutRate: number;
}

/**
 * How far behind the pipeline is, as a multiple of what is allowed, and the
 * rule that weighs most. 1 is the limit of each rule:
 * - `backlog_age`: the oldest spend job not yet committed, over
 *   backpressure_backlog_age_seconds;
 * - `held_rows`: the seconds the flush, at the rate it last reported, needs
 *   for the rows every gateway holds, over half a mean seal interval.
 *   Gateways seal on their own timers, so at any moment they hold half an
 *   interval's rows on average: past that, each interval brings more than
 *   the flush commits in one. Without this a fleet saw the backlog only when
 *   its seals landed, an interval late, and then handed the flush a wave of
 *   them at once;
 * - `held_rows_no_rate`: until a worker has measured its rate, the rows
 *   gateways hold over one flush transaction's (heldRowsWithoutRate): a
 *   fleet that starts (or wakes) flat out otherwise records a whole interval
 *   unchecked, and its first seals arrive as one wave that takes the flush
 *   many intervals to commit. Handed over early, those rows are also what
 *   gives the worker its first rate.
 */
export function pressureOf(
  load: PipelineLoad,
  rules: BackpressureRules,
): { pressure: number; reason: BackpressureReason } {
  const age = load.backlogAgeMs / rules.maxBacklogAgeMs;
  let held: number;
  let heldReason: BackpressureReason;
  if (load.flushRowsPerSec === null) {
    held = load.heldRows / Math.max(1, rules.heldRowsWithoutRate);
    heldReason = "held_rows_no_rate";
  } else {
    const meanHoldMs = (rules.intervalMs - rules.jitterMs / 2) / 2;
    held = (1000 * load.heldRows) / load.flushRowsPerSec / meanHoldMs;
    heldReason = "held_rows";
  }
  return age >= held
    ? { pressure: age, reason: "backlog_age" }
    : { pressure: held, reason: heldReason };
}

/** Which rule makes the pipeline behind, if any: pressure past 1 (see pressureOf). */
export function behindBecause(
  load: PipelineLoad,
  rules: BackpressureRules,
): BackpressureReason | undefined {
  const { pressure, reason } = pressureOf(load, rules);
  return pressure > 1 ? reason : undefined;
}

/**
 * The least a producer admits while the pipeline is behind but the flush is
 * committing: this fraction of its share of the flush rate. A fleet admitted
 * at a quarter of what the flush commits still lets the backlog shrink, so
 * gateways keep serving, slowly, instead of refusing everything whenever the
 * backlog's age passes a limit the pipeline cannot meet at that moment (a
 * limit below a seal interval plus a transaction is passed by every wave of
 * seals; stopping then wasted the flush's capacity, issue 22 goal 3).
 */
export const FLOOR_SHARE = 0.25;

/**
 * Pressure at which admission stops entirely, five times a limit, unless a
 * worker published its rate within FRESH_RATE_MS (it is committing: then
 * producers keep the floor). A flush that is not committing (a dead or stuck
 * worker: the backlog's age grows with the clock) gets there, and there the
 * backlog must not grow at all.
 */
export const STOP_PRESSURE = 5;

/**
 * A rate published this recently shows a flush committing now: a worker
 * publishes after every sizeable transaction, back to back while there is a
 * backlog.
 */
export const FRESH_RATE_MS = 10_000;

/**
 * The events per second a producer may admit under back-pressure: unlimited
 * (Infinity) at pressure 1 or less; none at STOP_PRESSURE or more unless the
 * flush is visibly committing (a fresh rate); in
 * between, its share of what the flush commits (the flush's rate over the
 * producers reporting, in events at this producer's rows per event), scaled
 * down in proportion as the pressure rises from 1 to 2, and never below
 * FLOOR_SHARE of it. A fleet admitted at its share of the flush rate adds
 * about what the flush takes away, so while the flush keeps up the pressure
 * settles and producers slow down without stopping. Before any worker has
 * published a rate, `assumedRowsPerSec` stands in for it: one transaction's
 * rows a second (heldRowsWithoutRate), which any flush that commits at all
 * reaches; so a fleet starting flat out trickles rather than stopping while
 * the worker measures its first rate.
 */
export function admissionRate(
  load: PipelineLoad,
  pressure: number,
  rowsPerEvent: number,
  assumedRowsPerSec: number,
): number {
  if (pressure <= 1) return Number.POSITIVE_INFINITY;
  const committing = load.flushRateAgeMs !== null && load.flushRateAgeMs <= FRESH_RATE_MS;
  if (pressure >= STOP_PRESSURE && !committing) return 0;
  const rowsPerSec = load.flushRowsPerSec ?? assumedRowsPerSec;
  const share = rowsPerSec / Math.max(1, load.producers) / Math.max(1, rowsPerEvent);
  return share * Math.max(FLOOR_SHARE, 2 - pressure);
}

/** How a producer reads the pipeline's load (SpendSink.pipelineLoad), publishing its own held rows. */
export type LoadReader = (
  producerId: string,
  heldRows: number,
  freshMs: number,
) => Promise<PipelineLoad>;

/**
 * A producer's back-pressure: every `everyMs` it reads how far behind the
 * flush is (and publishes the rows it holds), and sets the rate at which the
 * gateway may admit requests (admissionRate). admit() spends a token of a
 * bucket refilled at that rate: O(1) on the request path. Nothing recorded
 * is ever dropped because of it; it only tells callers to refuse new work.
 */
export class Backpressure {
  /** Events per second admitted: Infinity while not behind, 0 stopped. */
  private rate = Number.POSITIVE_INFINITY;
  private tokens = 0;
  private refilledAt = 0;
  private timer: TimerHandle | undefined;
  private stopped = false;

  constructor(
    private readonly readLoad: LoadReader,
    private readonly producerId: string,
    /** Rows this producer will hand over that no queue shows yet. */
    private readonly workRows: () => number,
    /** Rows this producer hands over per event it records (its last seals'). */
    private readonly rowsPerEvent: () => number,
    private readonly rules: BackpressureRules,
    private readonly everyMs: number,
    private readonly clock: Clock,
    /** Cheap wall-clock reads for the token bucket (the producer's coarse clock). */
    private readonly now: () => number,
    private readonly log: Logger,
    private readonly stats: ProducerMetrics,
    /** Called when it turns on: the producer hands over what it holds at once. */
    private readonly onBehind: () => Promise<void>,
  ) {}

  /** True while a rule holds: requests are admitted at a limited rate, or not at all. */
  get on(): boolean {
    return this.rate !== Number.POSITIVE_INFINITY;
  }

  /** The admitted rate, events per second (Infinity while off, 0 while stopped). */
  get admittedPerSecond(): number {
    return this.rate;
  }

  /** Whether one more request may be admitted now; spends a token if so (O(1)). */
  admit(): boolean {
    const rate = this.rate;
    if (rate === Number.POSITIVE_INFINITY) return true;
    if (rate <= 0) return false;
    const now = this.now();
    if (now !== this.refilledAt) {
      // At most a tenth of a second's worth banked: a burst, not a backlog of admissions.
      this.tokens = Math.min(
        Math.max(1, rate / 10),
        this.tokens + ((now - this.refilledAt) * rate) / 1000,
      );
      this.refilledAt = now;
    }
    if (this.tokens < 1) return false;
    this.tokens -= 1;
    return true;
  }

  start(): void {
    this.tick();
  }

  stop(): void {
    this.stopped = true;
    this.rate = Number.POSITIVE_INFINITY;
    this.clock.clearTimeout(this.timer);
  }

  private tick(): void {
    if (this.stopped) return;
    this.timer = this.clock.setTimeout(() => this.check().finally(() => this.tick()), this.everyMs);
  }

  /** One reading; exported behaviour is `on` and admit(). */
  async check(): Promise<void> {
    // A producer that stopped reporting drops out of the others' sums after this long.
    const freshMs = 3 * this.everyMs;
    let load: PipelineLoad;
    try {
      // A busy process answers late; a late answer is still the answer.
      load = await withTimeout(
        this.clock,
        this.readLoad(this.producerId, this.workRows(), freshMs),
        10 * this.everyMs,
        "reading the pipeline's load",
      );
    } catch {
      // Backlog unknown (Redis slow or away): keep the last reading rather than
      // guess either way. Sends fail and retry on their own meanwhile.
      return;
    }
    if (this.stopped) return;
    const { pressure, reason } = pressureOf(load, this.rules);
    const wasOn = this.on;
    const rate = admissionRate(load, pressure, this.rowsPerEvent(), this.rules.heldRowsWithoutRate);
    if (rate !== this.rate && rate !== Number.POSITIVE_INFINITY && !wasOn) {
      // A new episode starts with an empty bucket: what it admits is the rate's.
      this.tokens = 0;
      this.refilledAt = this.now();
    }
    this.rate = rate;
    if (this.on === wasOn) return;
    if (this.on) {
      this.stats.backpressureEpisodes.inc({ reason });
      // The figures each rule weighs, so an operator seeing 503s can tell which held.
      this.log.warn(
        {
          reason,
          pressure,
          admittedPerSecond: rate,
          backlogAgeMs: load.backlogAgeMs,
          backlogAgeLimitMs: this.rules.maxBacklogAgeMs,
          heldRows: load.heldRows,
          producers: load.producers,
          flushRowsPerSec: load.flushRowsPerSec,
          flushRateAgeMs: load.flushRateAgeMs,
        },
        "flush falling behind: back-pressure on until it catches up",
      );
    } else this.log.info("flush caught up: back-pressure off");
    // Hand over what is held now rather than at the next interval: the backlog
    // the gateways see then includes it, so they do not resume into a wave of
    // seals still on their way, and these rows wait in one queue, not two.
    if (this.on) await this.onBehind().catch(() => undefined);
  }
}

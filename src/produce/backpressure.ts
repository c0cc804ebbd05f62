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
export function behindBecause(
  load: PipelineLoad,
  rules: BackpressureRules,
): BackpressureReason | undefined {
  if (load.backlogAgeMs > rules.maxBacklogAgeMs) return "backlog_age";
  if (load.flushRowsPerSec === null)
    return load.heldRows > rules.heldRowsWithoutRate ? "held_rows_no_rate" : undefined;
  const secondsOfWork = load.heldRows / load.flushRowsPerSec;
  const meanHoldMs = (rules.intervalMs - rules.jitterMs / 2) / 2;
  return secondsOfWork * 1000 > meanHoldMs ? "held_rows" : undefined;
}

/** How a producer reads the pipeline's load (SpendSink.pipelineLoad), publishing its own held rows. */
export type LoadReader = (
  producerId: string,
  heldRows: number,
  freshMs: number,
) => Promise<PipelineLoad>;

/**
 * A producer's back-pressure: every `everyMs` it reads how far behind the
 * flush is (and publishes the rows it holds), and says whether the gateway
 * should stop taking requests. Nothing recorded is ever dropped because of
 * it; it only tells callers to stop adding. `on` is a field read: O(1) on
 * the request path.
 */
export class Backpressure {
  private behind = false;
  private timer: TimerHandle | undefined;
  private stopped = false;

  constructor(
    private readonly readLoad: LoadReader,
    private readonly producerId: string,
    /** Rows this producer will hand over that no queue shows yet. */
    private readonly workRows: () => number,
    private readonly rules: BackpressureRules,
    private readonly everyMs: number,
    private readonly clock: Clock,
    private readonly log: Logger,
    private readonly stats: ProducerMetrics,
    /** Called when it turns on: the producer hands over what it holds at once. */
    private readonly onBehind: () => Promise<void>,
  ) {}

  /** True while a rule holds. */
  get on(): boolean {
    return this.behind;
  }

  start(): void {
    this.tick();
  }

  stop(): void {
    this.stopped = true;
    this.behind = false;
    this.clock.clearTimeout(this.timer);
  }

  private tick(): void {
    if (this.stopped) return;
    this.timer = this.clock.setTimeout(() => this.check().finally(() => this.tick()), this.everyMs);
  }

  /** One reading; exported behaviour is `on`. */
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
    const reason = behindBecause(load, this.rules);
    const behind = reason !== undefined;
    if (behind === this.behind) return;
    if (reason !== undefined) {
      this.stats.backpressureEpisodes.inc({ reason });
      // The figures each rule weighs, so an operator seeing 503s can tell which held.
      this.log.warn(
        {
          reason,
          backlogAgeMs: load.backlogAgeMs,
          backlogAgeLimitMs: this.rules.maxBacklogAgeMs,
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
    if (behind) await this.onBehind().catch(() => undefined);
  }
}

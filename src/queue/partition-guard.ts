import type { Logger } from "../observe/logger.js";
import { waitUntilReady, type RedisClient } from "../redis/connection.js";
import { ensurePartitionCount, PartitionMismatchError } from "./partitions.js";

/**
 * A producer's side of the partition agreement (partitions.ts), checked at
 * start and every few seconds after: a worker may switch the count while a
 * gateway runs, and a gateway on the old count must then stop taking spend
 * (its rows would go to partitions nobody drains). `mismatch` says why
 * while they disagree; it is cleared if they agree again.
 */
export class PartitionGuard {
  private problem: string | undefined;
  private timer: NodeJS.Timeout | undefined;
  private stopped = false;

  constructor(
    private readonly redis: RedisClient,
    private readonly prefix: string,
    private readonly partitions: number,
    private readonly log: Logger,
    private readonly everyMs = 5_000,
  ) {}

  /** Why the counts disagree, or undefined. */
  get mismatch(): string | undefined {
    return this.problem;
  }

  /**
   * The first check, then the periodic ones. Rejects with
   * PartitionMismatchError when Redis answers within `waitMs` and disagrees;
   * with Redis away the producer starts (and buffers) and the check goes on
   * in the background.
   */
  async start(waitMs = 5_000): Promise<void> {
    try {
      await waitUntilReady(this.redis, waitMs);
      await ensurePartitionCount(this.redis, this.prefix, this.partitions, { role: "gateway" });
    } catch (err) {
      if (err instanceof PartitionMismatchError) throw err;
      this.log.warn(
        { err: (err as Error).message },
        "Redis not answering at start: the flush partition count is checked once it does",
      );
    }
    this.loop();
  }

  stop(): void {
    this.stopped = true;
    clearTimeout(this.timer);
  }

  private loop(): void {
    if (this.stopped) return;
    this.timer = setTimeout(() => void this.check().finally(() => this.loop()), this.everyMs);
    this.timer.unref();
  }

  private async check(): Promise<void> {
    try {
      await waitUntilReady(this.redis, this.everyMs);
      await ensurePartitionCount(this.redis, this.prefix, this.partitions, { role: "gateway" });
      if (this.problem !== undefined) this.log.info("flush partition count agrees again");
      this.problem = undefined;
    } catch (err) {
      // Redis away: the last answer stands until it is back.
      if (!(err instanceof PartitionMismatchError)) return;
      if (this.problem === undefined)
        this.log.fatal(
          { err: err.message },
          "flush partition count mismatch: refusing spend until restarted with the recorded count",
        );
      this.problem = err.message;
    }
  }
}

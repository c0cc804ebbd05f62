import type { Logger } from "../observe/logger.js";
import { sleep, systemClock, withTimeout, type Clock, type TimerHandle } from "../produce/clock.js";
import type { RedisClient } from "../redis/connection.js";
import type { RedisKeys } from "../redis/keys.js";
import type { KeySyncState } from "./virtual-keys.js";

/**
 * Key changes, from every gateway to every gateway, within a stated bound.
 *
 * An admin route that blocks, unblocks, updates or deletes a key commits
 * the change in PostgreSQL, then appends the key's hash to a Redis stream
 * (`<prefix>:key-events`) before it answers. Every gateway reads the stream
 * from where it left off every quarter of the bound (key_sync_seconds) and
 * drops the keys named from its cache, so their next request reads
 * PostgreSQL. A stream rather than pub/sub: a gateway that misses a read
 * (Redis away, a pause) reads what it missed on the next one, and each read
 * that answers proves the cache in sync up to when it was sent.
 *
 * When reads stop answering, the cache stops trusting itself: an entry older
 * than the bound is read again from PostgreSQL (virtual-keys.ts), and when
 * reads resume after a lapse longer than the bound, every entry is expired
 * (changes may have been trimmed from the stream meanwhile). So a change is
 * acted on within the bound whatever Redis does.
 */

/** Entries kept in the stream: far more than gateways read between two polls. */
const STREAM_MAX_ENTRIES = 10_000;
/** Entries read per call; a full page is followed at once by the next. */
const READ_COUNT = 1_000;

/** What the sync acts on: the gateway's key cache. */
export interface KeyChangeTarget {
  invalidate(tokens: Iterable<string>): void;
  expireAll(): void;
}

export class KeySync implements KeySyncState {
  /** The last entry read; undefined until the stream's end was found. */
  private lastId: string | undefined;
  private synced = -Infinity;
  private timer: TimerHandle | undefined;
  private stopped = false;
  private target: KeyChangeTarget | undefined;
  private failures = 0;
  /** True until the first read was tried: nothing can be cached before it (start() runs it). */
  private first = true;

  constructor(
    private readonly redis: RedisClient,
    private readonly keys: RedisKeys,
    readonly boundMs: number,
    private readonly log: Logger,
    private readonly onApplied: (keys: number) => void = () => undefined,
    private readonly clock: Clock = systemClock,
  ) {}

  syncedThrough(): number {
    return this.synced;
  }

  /** Seconds since the cache last followed the changes; undefined before the first read. */
  ageSeconds(): number | undefined {
    return Number.isFinite(this.synced) ? (this.clock.now() - this.synced) / 1000 : undefined;
  }

  /**
   * Starts following from the stream's end (the cache is empty, so nothing
   * announced before matters). Resolves once the first read answered, or
   * after the bound if Redis does not answer: the cache then re-reads keys
   * older than the bound until it does.
   */
  async start(target: KeyChangeTarget): Promise<void> {
    this.target = target;
    await this.poll();
    this.schedule();
  }

  stop(): void {
    this.stopped = true;
    this.clock.clearTimeout(this.timer);
  }

  private schedule(): void {
    if (this.stopped) return;
    // poll() never rejects: a failed read is counted and the next one tries again.
    this.timer = this.clock.setTimeout(
      () => this.poll().finally(() => this.schedule()),
      this.boundMs / 4,
    );
  }

  /** Reads every change announced since the last read and applies it. */
  async poll(): Promise<void> {
    for (;;) {
      const issued = this.clock.now();
      let reply: [string, [string, string[]][]][] | null;
      try {
        if (this.lastId === undefined) {
          // Start from the end: what was announced before cannot concern
          // entries cached before now, since those are expired below.
          const last = await withTimeout(
            this.clock,
            this.redis.xrevrange(this.keys.keyEvents, "+", "-", "COUNT", 1),
            this.boundMs / 2,
            "key change stream",
          );
          this.lastId = last[0]?.[0] ?? "0-0";
          reply = null;
        } else {
          reply = await withTimeout(
            this.clock,
            this.redis.xread("COUNT", READ_COUNT, "STREAMS", this.keys.keyEvents, this.lastId),
            this.boundMs / 2,
            "key change stream",
          );
        }
      } catch (err) {
        this.first = false;
        this.failed(err);
        return;
      }
      if (this.failures > 0) {
        this.log.info({ failures: this.failures }, "key change stream readable again");
        this.failures = 0;
      }
      // Back after a lapse: changes may have been missed (trimmed, or read
      // by nobody while this process was paused). Trust nothing cached.
      if (!this.first && issued - this.synced > this.boundMs) this.target?.expireAll();
      this.first = false;
      const entries = reply?.[0]?.[1] ?? [];
      const tokens: string[] = [];
      for (const [id, fields] of entries) {
        this.lastId = id;
        for (let i = 0; i + 1 < fields.length; i += 2)
          if (fields[i] === "t") for (const t of (fields[i + 1] ?? "").split(",")) tokens.push(t);
      }
      if (tokens.length > 0) {
        this.target?.invalidate(tokens);
        this.onApplied(tokens.length);
      }
      if (entries.length < READ_COUNT) {
        this.synced = issued;
        return;
      }
    }
  }

  private failed(err: unknown): void {
    // Stopping closes the connection under a read that may still run: no outage.
    if (this.stopped) return;
    // One line per outage, not one per poll.
    if (this.failures++ === 0)
      this.log.warn(
        { err: (err as Error).message },
        "key change stream unreadable: cached keys older than key_sync_seconds are re-read from PostgreSQL",
      );
  }
}

/**
 * Announces that keys (their hashes) changed, for every gateway to drop them
 * from its cache. Called after the change committed. Rejects if Redis did
 * not take it (three tries within about a second): the caller must say so,
 * since gateways that read the stream meanwhile may act on the old state
 * until their entry expires (key_cache_ttl_seconds).
 */
export async function announceKeyChanges(
  redis: RedisClient,
  keys: RedisKeys,
  tokens: readonly string[],
  clock: Clock = systemClock,
): Promise<void> {
  if (tokens.length === 0) return;
  let last: unknown;
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      await withTimeout(
        clock,
        redis.xadd(keys.keyEvents, "MAXLEN", "~", STREAM_MAX_ENTRIES, "*", "t", tokens.join(",")),
        1_000,
        "key change announcement",
      );
      return;
    } catch (err) {
      last = err;
      await sleep(clock, 100 * 2 ** attempt);
    }
  }
  throw last instanceof Error ? last : new Error(String(last));
}

import type { RedisClient } from "../redis/connection.js";
import { randomUUID } from "node:crypto";
import type { RedisKeys } from "../redis/keys.js";
import { lockScripts } from "./scripts.js";

/** One successful acquisition of the flush lock. */
export interface Lease {
  /** Unique per acquisition: the lock's value, compared on extend and release. */
  readonly token: string;
  /** Fencing token: PostgreSQL rejects a flush whose fence is below the last committed one. */
  readonly fence: bigint;
  readonly acquiredAt: number;
}

/**
 * The single-writer lock of the seed, kept in Redis: SET NX PX with a token,
 * renewed while a flush runs, released by compare-and-delete. A lease alone
 * is not safe (a paused holder can outlive it), so each acquisition also
 * carries a fencing token that PostgreSQL checks inside the flush transaction.
 */
export class FlushLock {
  constructor(
    private readonly redis: RedisClient,
    private readonly keys: Pick<RedisKeys, "flushLock" | "flushFence">,
    readonly leaseMs: number,
    /** Identifies this process in the lock's value, for operators reading Redis. */
    readonly holderId: string = randomUUID(),
  ) {}

  async acquire(): Promise<Lease | null> {
    const token = `${this.holderId}:${randomUUID()}`;
    const fence = await lockScripts.acquire.run(
      this.redis,
      [this.keys.flushLock, this.keys.flushFence],
      [token, this.leaseMs],
    );
    if (fence === 0 || fence === null) return null;
    return { token, fence: BigInt(fence as number | string), acquiredAt: Date.now() };
  }

  /**
   * Takes the lock from the holder whose token is `from` (compare-and-set),
   * with a new fencing token; null if the lock no longer holds `from`. For a
   * new flush leader whose predecessor stopped leading while still holding
   * the lock (died mid-flush): it need not wait out the lease, because the
   * fence refuses the displaced holder's commits and the batch ids skip what
   * it did commit.
   */
  async takeOver(from: string): Promise<Lease | null> {
    const token = `${this.holderId}:${randomUUID()}`;
    const fence = await lockScripts.takeOver.run(
      this.redis,
      [this.keys.flushLock, this.keys.flushFence],
      [from, token, this.leaseMs],
    );
    if (fence === 0 || fence === null) return null;
    return { token, fence: BigInt(fence as number | string), acquiredAt: Date.now() };
  }

  /** The holder id part of a lock token (`<holderId>:<uuid>`). */
  static holderOf(token: string): string {
    const at = token.lastIndexOf(":");
    return at < 0 ? token : token.slice(0, at);
  }

  async extend(lease: Lease): Promise<boolean> {
    return (
      (await lockScripts.extend.run(
        this.redis,
        [this.keys.flushLock],
        [lease.token, this.leaseMs],
      )) === 1
    );
  }

  async release(lease: Lease): Promise<boolean> {
    return (await lockScripts.release.run(this.redis, [this.keys.flushLock], [lease.token])) === 1;
  }

  /** See raise-fence-1.lua: repairs the counter after Redis lost it. Returns the counter before. */
  async raiseFence(floor: bigint): Promise<bigint> {
    const before = await lockScripts.raiseFence.run(
      this.redis,
      [this.keys.flushFence],
      [floor.toString()],
    );
    return BigInt(before as number | string);
  }

  /** Who holds the lock now and for how much longer (null when free). */
  async holder(): Promise<{ token: string; ttlMs: number } | null> {
    const [[, token], [, ttl]] = (await this.redis
      .multi()
      .get(this.keys.flushLock)
      .pttl(this.keys.flushLock)
      .exec()) as [[Error | null, string | null], [Error | null, number]];
    return token === null ? null : { token, ttlMs: ttl };
  }
}

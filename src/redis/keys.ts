import { createHash } from "node:crypto";
/**
 * Every Redis key and BullMQ queue name the project uses is built here, under
 * the deployment's prefix, so two deployments sharing one Redis never mix
 * their buffers (the reference's fixed global key names did).
 *
 * Names carry Redis Cluster hash tags: each BullMQ queue's keys share one
 * slot ({queue}), and the lock's Lua scripts touch only keys tagged {flush}.
 * Each flush partition has its own queues, lock and fence, in slots of their
 * own; partition 0 keeps the unpartitioned names, so P = 1 is the plain setup.
 */
export interface RedisKeys {
  /** BullMQ `prefix` option: every queue's keys start with it. */
  readonly bullPrefix: string;
  /** Entity spend batches (key, user, team, member, org, end user, tag). */
  readonly spendQueue: string;
  /** Daily spend batches (per entity, date, key, model, provider, ...). */
  readonly dailySpendQueue: string;
  /** Holds the repeatable flush job fired by the job scheduler. */
  readonly flushQueue: string;
  /** The single-writer lock: its value is the holder's token. */
  readonly flushLock: string;
  /** Monotonic counter handing out fencing tokens with each acquisition. */
  readonly flushFence: string;
  /** Id of the job scheduler that fires flushes. */
  readonly flushSchedulerId: string;
  /** Fence partition name stored in PostgreSQL (spend_flush_fence.partition). */
  readonly fencePartition: string;
  /** Which flush partition these names belong to (0-based). */
  readonly partition: number;
  /** Records the partition count producers and workers agreed on. */
  readonly partitionCount: string;
  /** Hash of producer id -> rows it holds and when it said so (back-pressure). */
  readonly heldRows: string;
  /** Rows per second this partition's last sizeable flush transaction committed. */
  readonly flushRate: string;
  /** When a flush of this partition last ran to an end, any outcome (epoch ms): readiness sees a stall. */
  readonly flushLastRun: string;
  /** When a flush of this partition last committed or found nothing to do (epoch ms): freshness, read by every role. */
  readonly flushLastSuccess: string;
  /** The flush leadership lease: the id of the one worker that takes flush jobs. */
  readonly flushLeader: string;
  /** Hash of worker id -> "<partitions>:<epoch ms>": flush workers alive, and the count each runs with. */
  readonly workers: string;
  /**
   * Stream of virtual keys changed through the admin routes (blocked,
   * unblocked, updated, deleted): every gateway reads it and drops those keys
   * from its cache. Entries hold the keys' hashes, never a key.
   */
  readonly keyEvents: string;
  /**
   * One `Idempotency-Key` of `POST /spend/events`: its claim and, once the
   * batch is in the queues, the answer. `keyHash`: the SHA-256 (hex) of the
   * client's key, so any key the client may send makes a well-formed name.
   */
  idempotencyClaim(keyHash: string): string;
  /**
   * BullMQ's lock of one job taken from a queue under this prefix (its value
   * is the taking flush's token): a new flush lock holder reads it to give
   * back the jobs a lapsed holder left active.
   */
  jobLock(queue: string, jobId: string): string;
}

const PREFIX = /^[A-Za-z0-9_.-]{1,64}$/;

export function redisKeys(prefix: string, partition = 0): RedisKeys {
  if (!PREFIX.test(prefix)) {
    throw new Error(
      `key prefix must be 1-64 characters of A-Z a-z 0-9 _ . -, got ${JSON.stringify(prefix)}`,
    );
  }
  if (!Number.isInteger(partition) || partition < 0) {
    throw new Error(`partition must be a non-negative integer, got ${partition}`);
  }
  const p = partition === 0 ? "" : `-p${partition}`;
  const bullPrefix = `${prefix}:bull`;
  return {
    bullPrefix,
    spendQueue: `{spend-update${p}}`,
    dailySpendQueue: `{daily-spend-update${p}}`,
    flushQueue: "{spend-flush}",
    flushLock: `${prefix}:{flush${p}}:lock`,
    flushFence: `${prefix}:{flush${p}}:fence`,
    flushSchedulerId: `spend-flush${p}`,
    fencePartition: `${prefix}:${partition}`,
    partition,
    partitionCount: `${prefix}:partitions`,
    heldRows: `${prefix}:{spend-held}:rows`,
    flushRate: `${prefix}:{flush${p}}:rate`,
    flushLastRun: `${prefix}:{flush${p}}:last-run`,
    flushLastSuccess: `${prefix}:{flush${p}}:last-success`,
    flushLeader: `${prefix}:flush-leader`,
    workers: `${prefix}:workers`,
    keyEvents: `${prefix}:key-events`,
    idempotencyClaim: (keyHash: string) => {
      if (!/^[0-9a-f]{64}$/.test(keyHash))
        throw new Error("an idempotency claim is named by a SHA-256 in hex");
      return `${prefix}:idempotency:${keyHash}`;
    },
    // BullMQ's own layout: <prefix>:<queue>:<job id>, and ":lock" after it.
    jobLock: (queue, jobId) => `${bullPrefix}:${queue}:${jobId}:lock`,
  };
}

/**
 * One entity's budget state for its current period (a hash: period, epoch,
 * remaining). The hash tag is a digest of the entity, not its id: ids may hold
 * braces, and a hash tag must not be cut short by one.
 */
export function budgetKey(prefix: string, kind: string, id: string): string {
  const tag = createHash("sha256").update(`${kind}\u0000${id}`).digest("hex").slice(0, 20);
  return `${prefix}:budget:{${tag}}`;
}

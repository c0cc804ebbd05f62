import type { RedisClient } from "../redis/connection.js";
import { Job, Queue, Worker } from "bullmq";
import type { RedisKeys } from "../redis/keys.js";
import { checkDailyJob, checkEntityJob } from "../contract/job-check.js";
import { RowMerger } from "../persist/merge.js";
import {
  dailyJobPayloadSchema,
  entityJobSchema,
  type DailyRow,
  type DailySpendJob,
  type EntityRow,
  type EntitySpendJob,
} from "../contract/spend-batch.js";

/**
 * Rows of a job that cannot be stored as they are (a string that is not
 * well-formed Unicode: PostgreSQL would store U+FFFD in its place). The rest
 * of the job is applied; these become its dead letter.
 */
export interface IllFormedRows<Row> {
  rows: Row[];
  detail: string;
}

export type TakenJob =
  | { kind: "entity"; job: Job; data: EntitySpendJob; illFormed?: IllFormedRows<EntityRow> }
  | { kind: "daily"; job: Job; data: DailySpendJob; illFormed?: IllFormedRows<DailyRow> };

/** A job whose payload cannot be read as a spend job: set aside whole, never retried. */
export interface MalformedJob {
  queue: "entity" | "daily";
  job: Job;
  reason: string;
}

/** What one take may hold (SpendDrain.take). */
export interface TakeLimits {
  maxJobs: number;
  /** Rows the taken jobs merge into: what their transaction writes. */
  maxRows: number;
  /** Rows as sealed: what the taken jobs hold in memory. */
  maxSealedRows: number;
}

export interface Taken {
  jobs: TakenJob[];
  poison: MalformedJob[];
  /** False when both queues ran out: nothing was waiting beyond what was taken. */
  more: boolean;
  /** Rows of the valid jobs, as sealed (before batches merge): the producers' unit. */
  rows: number;
}

/**
 * Pulls spend jobs out of the BullMQ queues by hand (BullMQ's "manually
 * fetching jobs" pattern): a job becomes active under the flush's token, and
 * only after the transaction commits is it moved to completed. If the flush
 * dies first, the job's lock expires and BullMQ's stalled check returns it to
 * wait for the next flush: at-least-once, made exactly-once by the batch id.
 */
export class SpendDrain {
  private readonly entity: Worker;
  private readonly daily: Worker;
  /** The same queues, for reading which jobs are active (reclaim). */
  private readonly entityQueue: Queue;
  private readonly dailyQueue: Queue;

  constructor(
    private readonly connection: RedisClient,
    private readonly keys: RedisKeys,
    jobLockMs: number,
  ) {
    const opts = {
      connection,
      prefix: keys.bullPrefix,
      autorun: false,
      lockDuration: jobLockMs,
      stalledInterval: jobLockMs,
      // A stalled spend job is a flush that died: always give it back, never fail it.
      maxStalledCount: Number.MAX_SAFE_INTEGER,
    };
    this.entity = new Worker(keys.spendQueue, null, opts);
    this.daily = new Worker(keys.dailySpendQueue, null, opts);
    this.entity.on("error", () => undefined);
    this.daily.on("error", () => undefined);
    const queueOpts = { connection, prefix: keys.bullPrefix };
    this.entityQueue = new Queue(keys.spendQueue, queueOpts);
    this.dailyQueue = new Queue(keys.dailySpendQueue, queueOpts);
    this.entityQueue.on("error", () => undefined);
    this.dailyQueue.on("error", () => undefined);
  }

  /**
   * Records in Redis that a flush of this partition did its job (committed,
   * or found nothing to do): every gateway and worker reads it for
   * spend_seconds_since_last_successful_flush, so freshness is visible with
   * every worker down. Kept a week: long enough to say "very stale".
   */
  async markSuccess(at = Date.now()): Promise<void> {
    await this.connection.set(this.keys.flushLastSuccess, String(at), "PX", 7 * 86_400_000);
  }

  /**
   * Starts BullMQ's stalled-job check, which returns jobs of dead flushes to
   * wait; `onStalled` hears of each job it returns (a worker restarted after
   * the only one died has its check return them before its first flush looks).
   */
  async start(onStalled: (jobId: string) => void = () => undefined): Promise<void> {
    this.entity.on("stalled", onStalled);
    this.daily.on("stalled", onStalled);
    await Promise.all([this.entity.startStalledCheckTimer(), this.daily.startStalledCheckTimer()]);
  }

  /**
   * Takes jobs under `token` and merges their rows into `merger` as they
   * arrive: entity jobs first, until the rows they merge into reach half of
   * `maxRows`, then daily ones until all reach `maxRows` (at least one job of
   * each queue that has any, at most `maxJobs`), and never more than
   * `maxSealedRows` rows as sealed (what they hold in memory). Bounding the
   * merged rows bounds what the transaction writes and locks, and lets a
   * backlog's repeated keys (the same key, user or team in many gateways'
   * batches) merge into fewer writes. `onTaken` hears of each job the moment
   * it is active under the token, so a take that fails halfway still leaves
   * the caller knowing every job it must give back.
   */
  async take(
    limits: TakeLimits,
    token: string,
    onTaken: (job: Job) => void = () => undefined,
    merger: RowMerger = new RowMerger(),
  ): Promise<Taken> {
    const taken: Taken = { jobs: [], poison: [], more: false, rows: 0 };
    const half = Math.max(1, Math.ceil(limits.maxJobs / 2));
    const entityEmpty = await takeFrom(this.entity, token, onTaken, {
      taken,
      maxJobs: half,
      // Rows this transaction writes (merged) and holds (sealed), so far.
      rows: () => merger.entityRows,
      maxRows: Math.ceil(limits.maxRows / 2),
      maxSealedRows: Math.ceil(limits.maxSealedRows / 2),
      read: (job) => {
        // The hand-written check first; the schema only for what it refuses (and why).
        const fast = checkEntityJob(job.data);
        const r =
          fast !== undefined
            ? { success: true as const, data: fast }
            : entityJobSchema.safeParse(job.data);
        if (!r.success) {
          taken.poison.push({ queue: "entity", job, reason: summarize(r.error.issues) });
          return;
        }
        const illFormed = splitIllFormed(r.data.rows, ENTITY_TEXT_COLUMNS);
        taken.jobs.push({
          kind: "entity",
          job,
          data: r.data,
          ...(illFormed !== undefined ? { illFormed } : {}),
        });
        taken.rows += r.data.rows.length;
        merger.addEntity(r.data.rows);
      },
    });
    const dailyEmpty = await takeFrom(this.daily, token, onTaken, {
      taken,
      maxJobs: limits.maxJobs,
      rows: () => merger.entityRows + merger.dailyRows,
      maxRows: limits.maxRows,
      maxSealedRows: limits.maxSealedRows,
      read: (job) => {
        const fast = checkDailyJob(job.data);
        const r =
          fast !== undefined
            ? { success: true as const, data: fast }
            : dailyJobPayloadSchema.safeParse(job.data);
        if (!r.success) {
          taken.poison.push({ queue: "daily", job, reason: summarize(r.error.issues) });
          return;
        }
        const illFormed = splitIllFormed(r.data.rows, DAILY_TEXT_COLUMNS);
        taken.jobs.push({
          kind: "daily",
          job,
          data: r.data,
          ...(illFormed !== undefined ? { illFormed } : {}),
        });
        taken.rows += r.data.rows.length;
        merger.addDaily(r.data.rows);
      },
    });
    taken.more = !entityEmpty || !dailyEmpty;
    return taken;
  }

  async complete(jobs: readonly Job[], token: string): Promise<void> {
    await inChunks(jobs, (j) => j.moveToCompleted("flushed", token, false));
  }

  /**
   * Puts back in wait every job of this partition's queues left active by an
   * earlier holder of the flush lock; returns how many. Call it holding the
   * lock, before taking anything under `token`: only the lock holder takes
   * spend jobs, so any job active then was taken by a holder whose lease has
   * lapsed (dead, paused, cut off from Redis). Without it those jobs wait for
   * BullMQ's stalled check, up to two job lock durations. Giving them to the
   * new holder at once is safe because of what PostgreSQL checks: a resumed
   * old holder is fenced off and cannot commit, and a batch it did commit
   * before losing the lease is recorded and skipped (its batch id).
   */
  async reclaim(token: string): Promise<number> {
    let reclaimed = 0;
    for (const [queue, worker] of [
      [this.entityQueue, this.entity],
      [this.dailyQueue, this.daily],
    ] as const) {
      const ids = await queue.getRanges(["active"], 0, -1);
      await inChunks(ids, async (id) => {
        const lock = await this.connection.get(this.keys.jobLock(worker.name, id));
        if (lock === token) return;
        const job = await Job.fromId(worker, id);
        if (job === undefined) return;
        // BullMQ's moveToWait compares and deletes the lock with the token it is
        // given, and skips that check for "0": the old holder's token when the
        // lock is still there (so it goes too), "0" when it has expired.
        try {
          await job.moveToWait(lock ?? "0");
          reclaimed++;
        } catch {
          // Moved on meanwhile (the stalled check returned it, or it finished): nothing to give back.
        }
      });
    }
    return reclaimed;
  }

  /**
   * Puts jobs back in wait after a flush that did not commit. Every job is
   * tried even if some fail (a job the next holder already reclaimed refuses
   * this token); rejects with the first failure once all were tried.
   */
  async giveBack(jobs: readonly Job[], token: string): Promise<void> {
    let first: Error | undefined;
    await inChunks(jobs, (j) =>
      j.moveToWait(token).catch((err: unknown) => {
        first ??= err instanceof Error ? err : new Error(String(err));
      }),
    );
    if (first !== undefined) throw first;
  }

  /**
   * Marks malformed jobs failed (Bull Board lists them), once their dead
   * letters are committed: PostgreSQL holds them, Redis only shows them.
   */
  async setAside(jobs: readonly MalformedJob[], token: string): Promise<void> {
    await inChunks(jobs, (p) =>
      p.job.moveToFailed(new Error(`malformed spend job: ${p.reason}`), token, false),
    );
  }

  /** Keeps the jobs' BullMQ locks alive while the flush that holds them runs. */
  async extend(jobs: readonly Job[], token: string, durationMs: number): Promise<void> {
    const byQueue = new Map<Worker, string[]>();
    for (const j of jobs) {
      const w = j.queueName === this.entity.name ? this.entity : this.daily;
      const ids = byQueue.get(w) ?? [];
      if (j.id !== undefined) ids.push(j.id);
      byQueue.set(w, ids);
    }
    await Promise.all(
      [...byQueue].map(([w, ids]) =>
        w.extendJobLocks(
          ids,
          ids.map(() => token),
          durationMs,
        ),
      ),
    );
  }

  async close(): Promise<void> {
    await Promise.all([
      this.entity.close(),
      this.daily.close(),
      this.entityQueue.close(),
      this.dailyQueue.close(),
    ]);
  }
}

// Each getNextJob is one round trip; a few dozen in flight keep it fast without flooding Redis.
const PARALLEL = 32;

/** What one queue's part of a take stops at, and what it does with each job. */
interface TakeFromQueue {
  /** The whole take so far (both queues): its jobs and rows as sealed. */
  taken: Taken;
  /** Stops when the take holds this many jobs... */
  maxJobs: number;
  /** ...or `rows()` (merged rows so far) reaches `maxRows`, or the rows as sealed reach `maxSealedRows`. */
  rows: () => number;
  maxRows: number;
  maxSealedRows: number;
  /** Validates a job and adds it to the take (as a valid job or a poison one). */
  read: (job: Job) => void;
}

/** Takes from one queue until its bounds are reached or it is empty; returns whether it ran empty. */
async function takeFrom(
  worker: Worker,
  token: string,
  onTaken: (job: Job) => void,
  q: TakeFromQueue,
): Promise<boolean> {
  const jobsAtStart = q.taken.jobs.length + q.taken.poison.length;
  const rowsAtStart = q.rows();
  const sealedAtStart = q.taken.rows;
  const jobs = (): number => q.taken.jobs.length + q.taken.poison.length;
  for (let first = true; ; first = false) {
    const fromHere = jobs() - jobsAtStart;
    const rows = q.rows();
    const sealed = q.taken.rows;
    if (jobs() >= q.maxJobs) return false;
    // At least one job from this queue; then until a bound is reached.
    if (!first && (rows >= q.maxRows || sealed >= q.maxSealedRows)) return false;
    // A fetched job cannot be given back cheaply, so fetch about as many as
    // the bounds still allow, judged by what each job added so far (one to start).
    let n = 1;
    if (fromHere > 0) {
      const perJob = Math.max(1, (rows - rowsAtStart) / fromHere);
      const perJobSealed = Math.max(1, (sealed - sealedAtStart) / fromHere);
      n = Math.min(
        PARALLEL,
        q.maxJobs - jobs(),
        Math.ceil((q.maxRows - rows) / perJob),
        Math.ceil((q.maxSealedRows - sealed) / perJobSealed),
      );
    }
    const got = await Promise.all(
      Array.from({ length: Math.max(1, n) }, async () => {
        const j = await worker.getNextJob(token, { block: false });
        if (j !== undefined && j !== null) onTaken(j);
        return j;
      }),
    );
    let empty = false;
    for (const j of got) {
      if (j === undefined || j === null) empty = true;
      else q.read(j);
    }
    if (empty) return true;
  }
}

async function inChunks<T>(items: readonly T[], fn: (item: T) => Promise<unknown>): Promise<void> {
  for (let i = 0; i < items.length; i += PARALLEL) {
    await Promise.all(items.slice(i, i + PARALLEL).map(fn));
  }
}

// The string columns of each row format (the rest are kinds, counts and digits, which the schema checks).
const ENTITY_TEXT_COLUMNS = [1, 2] as const;
const DAILY_TEXT_COLUMNS = [1, 2, 3, 4, 5, 6, 7, 8] as const;

/**
 * Takes out of `rows` (in place) those with a string that is not well-formed
 * UTF-16. Producers refuse such ids; a job from elsewhere (an older producer,
 * a hand-written job) may still carry one, and PostgreSQL would silently
 * store U+FFFD in its place.
 */
function splitIllFormed<Row extends readonly unknown[]>(
  rows: Row[],
  columns: readonly number[],
): IllFormedRows<Row> | undefined {
  let bad: Row[] | undefined;
  let kept = 0;
  for (let i = 0; i < rows.length; i++) {
    const row = rows[i] as Row;
    let ok = true;
    for (const c of columns) if (!(row[c] as string).isWellFormed()) ok = false;
    if (ok) rows[kept++] = row;
    else (bad ??= []).push(row);
  }
  if (bad === undefined) return undefined;
  rows.length = kept;
  return {
    rows: bad,
    detail: `${bad.length} row(s) hold a string that is not well-formed Unicode (a lone surrogate); PostgreSQL would store U+FFFD instead`,
  };
}

function summarize(issues: readonly { path: readonly PropertyKey[]; message: string }[]): string {
  return issues
    .slice(0, 3)
    .map((i) => `${i.path.map(String).join(".") || "(root)"}: ${i.message}`)
    .join("; ");
}

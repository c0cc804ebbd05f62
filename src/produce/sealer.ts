import { factRowCount, NO_TAGS } from "../contract/daily-facts.js";
import { RowTextWriter } from "../contract/row-text.js";
import {
  DAILY_KINDS,
  ENTITY_KINDS,
  sameDailyContext,
  type DailyRow,
} from "../contract/spend-batch.js";
import type { SealedBatch } from "../contract/spend-sink.js";
import type { ContextStrings, DrainTarget, DrainedRows } from "./aggregator.js";
import { FNV_SEED, hashField, hashOn, partitionOfHash } from "./partition.js";

export interface SealHeader {
  producerId: string;
  sealedAt: number;
  /** The producer's partition count. */
  partitions: number;
}

/** A job's rows before it gets its batch id: entity row text, or daily fact text (row-text.ts). */
export interface UnnumberedBatch {
  kind: "entity" | "daily";
  /** 3: row text; 4: daily fact text. */
  textFormat: 3 | 4;
  partition: number;
  /** Entity rows, or daily facts. */
  rowCount: number;
  /** Rows the flush writes for it (SealedBatch.flushRows). */
  flushRows: number;
  rowText: string;
}

// Ids of one context JobWriter.newRows keeps to count its rows once (see there).
const SEEN_LIMIT = 2_048;

/** Adds a fact's ids to `seen` (sets per kind); returns how many were new. */
function addIds(
  seen: readonly Set<string>[],
  tags: readonly string[],
  user: string,
  team: string,
  org: string,
  endUser: string,
): number {
  let n =
    addId(seen[0], user) + addId(seen[1], team) + addId(seen[2], org) + addId(seen[3], endUser);
  for (let i = 0; i < tags.length; i++) n += addId(seen[4], tags[i] as string);
  return n;
}

/** 1 if `id` is new to `s` (and now in it), else 0; "" names nothing. */
function addId(s: Set<string> | undefined, id: string): number {
  if (id === "" || s === undefined || s.has(id)) return 0;
  s.add(id);
  return 1;
}

/** A job being written (pooled with its text's buffer). */
class OpenJob {
  readonly text = new RowTextWriter();
  /** The context whose text the job last wrote (a context's facts follow it). */
  context: ContextStrings | undefined = undefined;
  /** The daily rows its facts fan out to (a context's merged), or its rows. */
  flushRows = 0;
}

// A job also closes once its text reaches this many bytes, whatever its rows:
// V8 allocates a string past 128 KB (and BullMQ's JSON of it) in its
// large-object space, fresh pages each time, and first-touch page faults made
// taking such a text ~35 times slower per byte than one below (1.6 ms
// against 44 us for 572 KB in pieces, bench machine). 2,000 rows with ids the
// length of real key hashes and UUIDs pass it; the benchmark's short ids do not.
// (A job whose text turns two-byte part way doubles at once, up to twice this.)
export const MAX_JOB_TEXT_BYTES = 100_000;

// Closed jobs, for the next ones, process-wide: their buffers have grown to a
// job's size already, and the pool keeps the seal's hidden classes alive
// between seals and producers (see JobWriter). A seal holds two jobs open
// per partition; more spares than this are left to the collector.
const SPARE_LIMIT = 32;
const spareJobs: OpenJob[] = [];

/**
 * Drained entity rows and daily facts (or daily rows) written straight into
 * jobs' text: each to the flush partition that owns it, and a job closes at
 * `maxRowsPerJob` rows (facts, in a fact job) or MAX_JOB_TEXT_BYTES of text.
 * An entity row goes to the partition a stable hash of its identity picks.
 * A daily fact goes to its context's (date, key, model, group, provider, MCP
 * tool, endpoint): every daily row it fans out to is written by that
 * partition. Daily rows written as rows (sealBatches) go by their own
 * identity, as every version has cut them. What a seal keeps until its jobs
 * are sent is one flat string per job, not an array per row (issue 22:
 * those arrays lived in the young generation through the seal, and every
 * scavenge copied them).
 * Jobs come out entity jobs first, as the rows are drained.
 *
 * A producer keeps one JobWriter for all its seals (finish() readies it for
 * the next), and open jobs come from a process-wide pool: V8 keeps an
 * object's hidden class only while some object has it, and a writer and
 * jobs made per seal died between seals, taking the classes the optimized
 * seal code checks for with them. Every seal then began in unoptimized code,
 * compiling the seal path again, on the same core as the event loop when
 * the process has one: the 10-20 ms stalls goal 2 measured.
 */
export class JobWriter implements DrainTarget {
  /** The jobs closed since the last take or finish(), in order. */
  private jobs: UnnumberedBatch[] = [];
  /** Entity rows, and daily facts or rows, written since the last finish() and not taken (takeClosed). */
  entityRows = 0;
  dailyRows = 0;

  private readonly entityOpen: (OpenJob | undefined)[] = [];
  private readonly factOpen: (OpenJob | undefined)[] = [];
  private readonly rowOpen: (OpenJob | undefined)[] = [];
  /** The context of the last fact, and its partition (a context's facts come together). */
  private lastContext: ContextStrings | undefined = undefined;
  private lastPartition = 0;
  // What newRows has counted of the current context: its first fact while it has one, then
  // its ids per kind (user, team, org, end user, tag).
  private countedContext: ContextStrings | undefined = undefined;
  private firstPending = false;
  private firstTags: readonly string[] = NO_TAGS;
  private firstUser = "";
  private firstTeam = "";
  private firstOrg = "";
  private firstEndUser = "";
  private readonly seen: Set<string>[] = [new Set(), new Set(), new Set(), new Set(), new Set()];
  private seenIds = 0;

  constructor(
    private readonly partitions: number,
    private readonly maxRowsPerJob: number,
  ) {}

  entity(kind: number, id: string, id2: string, spendPico: number | string): void {
    const p =
      this.partitions <= 1
        ? 0
        : partitionOfHash(
            hashField(hashField(hashOn(FNV_SEED, ENTITY_KINDS[kind] as string), id), id2),
            this.partitions,
          );
    const job = this.open(this.entityOpen, p);
    job.text.entityRow(kind, id, id2, spendPico);
    job.flushRows++;
    this.entityRows++;
    if (this.full(job)) this.close("entity", 3, this.entityOpen, p);
  }

  entitiesDone(): void {
    this.closeAll("entity", 3, this.entityOpen);
  }

  fact(
    c: ContextStrings,
    tags: readonly string[],
    user: string,
    team: string,
    org: string,
    endUser: string,
    prompt: number | string,
    completion: number | string,
    cacheRead: number | string,
    cacheCreation: number | string,
    requests: number | string,
    successes: number | string,
    spendPico: number | string,
  ): void {
    if (c !== this.lastContext) {
      this.lastContext = c;
      this.lastPartition = this.partitions <= 1 ? 0 : contextPartition(c, this.partitions);
    }
    const p = this.lastPartition;
    const job = this.open(this.factOpen, p);
    this.contextOf(job, c);
    job.text.fact(
      tags,
      user,
      team,
      org,
      endUser,
      prompt,
      completion,
      cacheRead,
      cacheCreation,
      requests,
      successes,
      spendPico,
    );
    job.flushRows += this.newRows(c, tags, user, team, org, endUser);
    this.dailyRows++;
    if (this.full(job)) this.close("daily", 4, this.factOpen, p);
  }

  /** A daily row as row text (format 3), in the partition its identity hashes to. */
  dailyRow(
    c: ContextStrings,
    kind: number,
    id: string,
    prompt: number | string,
    completion: number | string,
    cacheRead: number | string,
    cacheCreation: number | string,
    requests: number | string,
    successes: number | string,
    failed: number | string,
    spendPico: number | string,
  ): void {
    const p = this.partitions <= 1 ? 0 : this.rowPartition(c, kind, id);
    const job = this.open(this.rowOpen, p);
    this.contextOf(job, c);
    job.text.dailyRow(
      kind,
      id,
      prompt,
      completion,
      cacheRead,
      cacheCreation,
      requests,
      successes,
      failed,
      spendPico,
    );
    job.flushRows++;
    this.dailyRows++;
    if (this.full(job)) this.close("daily", 3, this.rowOpen, p);
  }

  /**
   * The jobs closed since the last take or finish(), the open ones left open:
   * a seal under way hands its full jobs to delivery as it goes.
   */
  takeClosed(): UnnumberedBatch[] {
    const jobs = this.jobs;
    if (jobs.length === 0) return jobs;
    this.jobs = [];
    // What is taken is counted where it went (delivery), no longer here.
    for (const j of jobs)
      if (j.kind === "entity") this.entityRows -= j.rowCount;
      else this.dailyRows -= j.rowCount;
    return jobs;
  }

  /** Every job since the last take or finish(), the open ones closed; the writer starts afresh. */
  finish(): UnnumberedBatch[] {
    this.closeAll("entity", 3, this.entityOpen);
    this.closeAll("daily", 4, this.factOpen);
    this.closeAll("daily", 3, this.rowOpen);
    const jobs = this.jobs;
    this.jobs = [];
    this.entityRows = 0;
    this.dailyRows = 0;
    this.lastContext = undefined;
    // Nothing of this seal's ids is kept alive until the next.
    this.countedContext = undefined;
    this.firstPending = false;
    this.firstTags = NO_TAGS;
    for (const s of this.seen) s.clear();
    this.seenIds = 0;
    return jobs;
  }

  /**
   * The daily rows a fact adds that earlier facts of its context did not
   * name: what back-pressure weighs against the rows a second the flush
   * commits, which merges a context's rows (counting every fact whole made
   * it 6.1 rows a request against 4.5 at the benchmark's cardinality). A
   * context's first fact counts whole; from its second on, the context's ids
   * are kept in sets, so only contexts of several facts pay for them. Past
   * SEEN_LIMIT ids a context's further facts count whole: one context can
   * hold most of a gateway's facts (every request of one key on one day and
   * model), and a set growing to 100k ids rehashed for milliseconds at a
   * time, on the event loop (issue 22, goal 2).
   */
  private newRows(
    c: ContextStrings,
    tags: readonly string[],
    user: string,
    team: string,
    org: string,
    endUser: string,
  ): number {
    const seen = this.seen;
    if (c !== this.countedContext) {
      this.countedContext = c;
      this.firstPending = true;
      this.firstTags = tags;
      this.firstUser = user;
      this.firstTeam = team;
      this.firstOrg = org;
      this.firstEndUser = endUser;
      return factRowCount(tags, user, team, org, endUser);
    }
    if (this.firstPending) {
      // The context's second fact: its first one's ids go in first.
      this.firstPending = false;
      for (const s of seen) s.clear();
      this.seenIds = addIds(
        seen,
        this.firstTags,
        this.firstUser,
        this.firstTeam,
        this.firstOrg,
        this.firstEndUser,
      );
    }
    if (this.seenIds > SEEN_LIMIT) return factRowCount(tags, user, team, org, endUser);
    const n = addIds(seen, tags, user, team, org, endUser);
    this.seenIds += n;
    return n;
  }

  /** Writes c's strings into the job unless its last fact or row was of c. */
  private contextOf(job: OpenJob, c: ContextStrings): void {
    if (job.context === c) return;
    job.context = c;
    job.text.context(
      c.date,
      c.apiKey,
      c.model,
      c.modelGroup,
      c.provider,
      c.mcpToolName,
      c.endpoint,
    );
  }

  /** A daily row's identity (kind, id, then its context) hashed field by field. */
  private rowPartition(c: ContextStrings, kind: number, id: string): number {
    let h = hashField(hashOn(FNV_SEED, DAILY_KINDS[kind] as string), id);
    h = hashField(h, c.date);
    h = hashField(h, c.apiKey);
    h = hashField(h, c.model);
    h = hashField(h, c.modelGroup);
    h = hashField(h, c.provider);
    h = hashField(h, c.mcpToolName);
    h = hashField(h, c.endpoint);
    return partitionOfHash(h, this.partitions);
  }

  /** Whether a job is done: `maxRowsPerJob` rows, or MAX_JOB_TEXT_BYTES of text. */
  private full(job: OpenJob): boolean {
    return job.text.rows >= this.maxRowsPerJob || job.text.byteLength >= MAX_JOB_TEXT_BYTES;
  }

  private open(list: (OpenJob | undefined)[], p: number): OpenJob {
    let job = list[p];
    if (job === undefined) {
      job = spareJobs.pop() ?? new OpenJob();
      list[p] = job;
    }
    return job;
  }

  private close(
    kind: "entity" | "daily",
    textFormat: 3 | 4,
    list: (OpenJob | undefined)[],
    p: number,
  ): void {
    const job = list[p];
    if (job === undefined || job.text.rows === 0) return;
    list[p] = undefined;
    const rowCount = job.text.rows;
    const flushRows = job.flushRows;
    this.jobs.push({
      kind,
      textFormat,
      partition: p,
      rowCount,
      flushRows,
      rowText: job.text.take(),
    });
    job.context = undefined;
    job.flushRows = 0;
    if (spareJobs.length < SPARE_LIMIT) spareJobs.push(job);
  }

  private closeAll(
    kind: "entity" | "daily",
    textFormat: 3 | 4,
    list: (OpenJob | undefined)[],
  ): void {
    for (let p = 0; p < list.length; p++) this.close(kind, textFormat, list, p);
  }
}

/**
 * The partition that owns a context's daily rows: its seven strings hashed
 * field by field, in contextIdentity's order (partition.ts).
 */
function contextPartition(c: ContextStrings, partitions: number): number {
  let h = hashOn(FNV_SEED, c.date);
  h = hashField(h, c.apiKey);
  h = hashField(h, c.model);
  h = hashField(h, c.modelGroup);
  h = hashField(h, c.provider);
  h = hashField(h, c.mcpToolName);
  h = hashField(h, c.endpoint);
  return partitionOfHash(h, partitions);
}

/**
 * Drained rows as batches of row text (format 3): each row to the flush
 * partition its identity hashes to, jobs of at most `maxRowsPerJob` rows,
 * each with the next batch id. Idempotent ingest batches are sealed this
 * way: a batch resumed by another gateway must be cut into the same jobs
 * under the same ids, whatever version that gateway runs.
 */
export function sealBatches(
  drained: DrainedRows,
  header: SealHeader,
  maxRowsPerJob: number,
  nextBatchId: () => string,
): SealedBatch[] {
  const w = new JobWriter(header.partitions, maxRowsPerJob);
  for (const r of drained.entity) w.entity(ENTITY_KINDS.indexOf(r[0]), r[1], r[2], r[3]);
  w.entitiesDone();
  let c: ContextStrings | undefined;
  let last: DailyRow | undefined;
  for (const r of drained.daily) {
    // Rows of one context share one ContextStrings, so the writer sees them as one run.
    if (c === undefined || last === undefined || !sameDailyContext(last, r)) {
      c = {
        date: r[2],
        apiKey: r[3],
        model: r[4],
        modelGroup: r[5],
        provider: r[6],
        mcpToolName: r[7],
        endpoint: r[8],
      };
    }
    w.dailyRow(
      c,
      DAILY_KINDS.indexOf(r[0]),
      r[1],
      r[9],
      r[10],
      r[11],
      r[12],
      r[13],
      r[14],
      r[15],
      r[16],
    );
    last = r;
  }
  return numberBatches(w.finish(), header, nextBatchId);
}

/** Each job with the next batch id, in order. */
export function numberBatches(
  jobs: readonly UnnumberedBatch[],
  header: SealHeader,
  nextBatchId: () => string,
): SealedBatch[] {
  return jobs.map((j) => ({ ...j, batchId: nextBatchId(), ...header }));
}

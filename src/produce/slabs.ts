import { NO_TAGS } from "../contract/daily-facts.js";
// Rows per chunk of the aggregator's slabs. The slabs grow a chunk at a time
// and never copy: doubling one flat typed array per slab copied every row held
// into fresh memory in the one record() that crossed a power of two, and on
// the benchmark VM, where first touching a page is slow, that call blocked the
// event loop for 30-270 ms at 100k-600k rows (issue 22, goal 2).
export const CHUNK_SHIFT = 12;
export const CHUNK_ROWS = 1 << CHUNK_SHIFT;
export const CHUNK_MASK = CHUNK_ROWS - 1;

// A daily fact's doubles: spend, the four token counters, requests,
// successes, and one spare so that a fact's counters are one 64-byte cache line.
export const DW = 8;

/** CHUNK_ROWS strings, all "": a packed array that ids are written into in place. */
function strings(): string[] {
  const a: string[] = [];
  for (let i = 0; i < CHUNK_ROWS; i++) a.push("");
  return a;
}

/**
 * Entity rows [k·CHUNK_ROWS, (k+1)·CHUNK_ROWS) of an aggregator, a column per
 * field. `C` is the aggregator's per-key index of daily contexts.
 */
export class EntityChunk<C> {
  /** Picodollars: a double, exact below 2^52, then spilled to the aggregator's overflow map. */
  readonly spend = new Float64Array(CHUNK_ROWS);
  /** The drain epoch the row was last touched in. */
  readonly mark = new Int32Array(CHUNK_ROWS);
  readonly kind = new Uint8Array(CHUNK_ROWS);
  readonly id = strings();
  /** The team of a membership row, else "". */
  readonly id2 = strings();
  /** A key row's daily contexts. */
  readonly contexts: (C | undefined)[] = [];

  constructor() {
    for (let i = 0; i < CHUNK_ROWS; i++) this.contexts.push(undefined);
  }
}

/** Daily facts [k·CHUNK_ROWS, (k+1)·CHUNK_ROWS) of an aggregator (contract/daily-facts.ts). */
export class FactChunk {
  /** DW doubles per fact: its counters and spend. */
  readonly f = new Float64Array(CHUNK_ROWS * DW);
  readonly mark = new Int32Array(CHUNK_ROWS);
  /** Its neighbours among its context's facts of the same end user (-1: none). */
  readonly prev = new Int32Array(CHUNK_ROWS);
  readonly next = new Int32Array(CHUNK_ROWS);
  readonly user = strings();
  readonly team = strings();
  readonly org = strings();
  readonly endUser = strings();
  /** Its tags (its own copy: a caller may reuse the array it recorded). */
  readonly tags: (readonly string[])[] = [];
  /**
   * The entity rows it adds to (user, team, membership, org, end user,
   * tags): FACT_ENTS per fact; a fact that adds to more keeps them all in
   * its aggregator's overflow map instead.
   */
  readonly ents = new Int32Array(CHUNK_ROWS * FACT_ENTS);
  readonly entCount = new Uint16Array(CHUNK_ROWS);

  constructor() {
    for (let i = 0; i < CHUNK_ROWS; i++) this.tags.push(NO_TAGS);
  }
}

/** Entity rows a fact holds inline: its user, team, membership, org, end user and three tags. */
export const FACT_ENTS = 8;

/**
 * A list of row indexes that keeps its chunks when cleared: the aggregator
 * refills its touched and free lists every interval, and a JS array emptied
 * by `length = 0` gives its storage back, then copies itself anew at every
 * growth step as it refills (8-17 ms at 250k entries on the benchmark VM).
 */
export class IntList {
  private readonly chunks: Int32Array[] = [];
  private n = 0;

  get length(): number {
    return this.n;
  }

  push(v: number): void {
    const n = this.n;
    const k = n >> CHUNK_SHIFT;
    if (k === this.chunks.length) this.chunks.push(new Int32Array(CHUNK_ROWS));
    (this.chunks[k] as Int32Array)[n & CHUNK_MASK] = v;
    this.n = n + 1;
  }

  /** Entry j (0 <= j < length). */
  at(j: number): number {
    return (this.chunks[j >> CHUNK_SHIFT] as Int32Array)[j & CHUNK_MASK] as number;
  }

  pop(): number | undefined {
    if (this.n === 0) return undefined;
    const n = --this.n;
    return (this.chunks[n >> CHUNK_SHIFT] as Int32Array)[n & CHUNK_MASK];
  }

  clear(): void {
    this.n = 0;
  }
}

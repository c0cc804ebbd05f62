// A map past this many entries is split into shards. Below it one Map is
// fastest; past it, V8's rehash when a Map grows or shrinks (one call, O(size),
// allocating the whole new table) starts to show as an event-loop stall:
// measured pinned on the benchmark VM, a Map of 200k ids took 19 ms in the
// set() that grew it and 10 ms in the delete() that shrank it.
const SPLIT_AT = 8_192;
// Shards once split: a shard's rehash is this many times smaller. At 64, a
// producer holding a million rows rehashes ~16k entries at most (~1.5 ms).
const SHARDS = 64;
const SHARD_MASK = SHARDS - 1;
// Entries a split moves per call once started: moving all SPLIT_AT of them in
// the set() that crossed it took 5-12 ms on the benchmark VM.
const MOVE_PER_CALL = 16;

// Characters shardOf hashes, from the end of an id.
const SHARD_CHARS = 24;

/**
 * The shard of an id: a hash of its length and its last SHARD_CHARS
 * characters, where ids of one pattern differ (sequence numbers, the local
 * part of emails of one domain, random tokens); sampling a few characters
 * instead left whole shards empty for emails of one domain. About 50 ns, paid
 * only by maps past SPLIT_AT. A set of ids that defeats it is only as slow
 * as one unsplit Map.
 */
export function shardOf(id: string): number {
  const n = id.length;
  // FNV-1a, then murmur3's finalizer for the low bits.
  let h = Math.imul(0x811c9dc5 ^ n, 0x01000193);
  for (let i = n > SHARD_CHARS ? n - SHARD_CHARS : 0; i < n; i++)
    h = Math.imul(h ^ id.charCodeAt(i), 0x01000193);
  h = Math.imul(h ^ (h >>> 16), 0x85ebca6b);
  h = Math.imul(h ^ (h >>> 13), 0xc2b2ae35);
  return (h ^ (h >>> 16)) & SHARD_MASK;
}

/**
 * A string-keyed map that never rehashes more than a slice of its entries at
 * once (issue 22, goal 2: no producer stall over 5 ms at 200k held rows): one
 * Map while small, SHARDS Maps chosen by shardOf once it passes `splitAt`.
 * The split is incremental: from then on new ids go to the shards, and each
 * call moves MOVE_PER_CALL entries of the old Map over, an id being in one
 * place or the other, never both. Shards are not merged back.
 */
export class IdMap<V> {
  /** Every entry while small; during a split, those not moved yet. */
  private one: Map<string, V> | undefined = new Map();
  private shards: Map<string, V>[] | undefined = undefined;
  /** The split's position in `one` (Map iterators survive deletes). */
  private moving: Iterator<[string, V]> | undefined = undefined;
  private count = 0;

  constructor(
    private readonly splitAt = SPLIT_AT,
    private readonly movePerCall = MOVE_PER_CALL,
  ) {}

  get size(): number {
    return this.count;
  }

  get(id: string): V | undefined {
    const shards = this.shards;
    if (shards === undefined) return (this.one as Map<string, V>).get(id);
    const v = (shards[shardOf(id)] as Map<string, V>).get(id);
    if (v !== undefined || this.one === undefined) return v;
    return this.one.get(id);
  }

  /** Adds or replaces. */
  set(id: string, v: V): void {
    const shards = this.shards;
    const one = this.one;
    if (shards === undefined) {
      (one as Map<string, V>).set(id, v);
      this.count = (one as Map<string, V>).size;
      if (this.count > this.splitAt) this.startSplit();
      return;
    }
    if (one !== undefined && one.has(id)) one.set(id, v);
    else {
      const shard = shards[shardOf(id)] as Map<string, V>;
      const before = shard.size;
      shard.set(id, v);
      this.count += shard.size - before;
    }
    if (one !== undefined) this.move();
  }

  delete(id: string): void {
    const shards = this.shards;
    const one = this.one;
    if (shards === undefined) {
      (one as Map<string, V>).delete(id);
      this.count = (one as Map<string, V>).size;
      return;
    }
    if ((shards[shardOf(id)] as Map<string, V>).delete(id)) this.count--;
    else if (one?.delete(id) === true) this.count--;
    if (one !== undefined) this.move();
  }

  private startSplit(): void {
    const shards: Map<string, V>[] = [];
    for (let s = 0; s < SHARDS; s++) shards.push(new Map());
    this.shards = shards;
    this.moving = (this.one as Map<string, V>).entries();
    this.move();
  }

  /** Moves the next movePerCall entries of `one` to their shards; drops it once empty. */
  private move(): void {
    const one = this.one as Map<string, V>;
    const shards = this.shards as Map<string, V>[];
    const it = this.moving as Iterator<[string, V]>;
    for (let k = 0; k < this.movePerCall; k++) {
      const r = it.next();
      if (r.done === true) {
        this.one = undefined;
        this.moving = undefined;
        return;
      }
      const [id, v] = r.value;
      (shards[shardOf(id)] as Map<string, V>).set(id, v);
      one.delete(id);
    }
  }
}

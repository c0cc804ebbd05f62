/**
 * The request path's view of every budget share a gateway holds, as plain
 * doubles side by side in one Float64Array: per share, what was charged since
 * the book last looked, how much more may be charged before it must look
 * again, how much may be charged before a check must look, and when the
 * share's period ends.
 *
 * Why not fields on the book's objects: on a busy gateway the rest of a
 * request's work evicts the book from the CPU's caches, and every object a
 * check or charge reaches through (slot, allowance, BigInt amounts) is a trip
 * to memory, for each of the seven or so entities a request is charged to;
 * with BigInt arithmetic besides, that came to about 12 µs per request in the
 * reference gateway against 0.4 µs in a tight loop. Here a share is 32 bytes
 * (two per cache line), and the common case is one read and one add.
 *
 * Amounts are picodollars. A double holds every integer below 2^53 exactly,
 * and the book keeps `spent` below that: it settles a share (moves what was
 * spent into its BigInt amounts) once `spent` passes `room`, which it sets
 * at most FAST_LIMIT, and a cost on the fast path is at most FAST_LIMIT too.
 */
export const FAST_LIMIT = 2 ** 51;

const STRIDE = 4;
const SPENT = 0;
const ROOM = 1;
const CHECK = 2;
const UNTIL = 3;
/** Place 0 holds the coarse time (see `now`): the time, and reads since it was read exactly. */
const NOW = 0;
const READS = 1;
const REFRESH_EVERY = 256;

export class ShareMeter {
  private v = new Float64Array(STRIDE * 64);
  private used = 1;

  constructor() {
    this.v[NOW] = Date.now();
  }

  /**
   * The time a charge compares with a share's period end (epoch ms), behind
   * the real clock by at most the book's timer period (`tick`, 10 ms): kept
   * in the meter's first place, not in a clock object, so a charge finds it
   * beside the shares instead of in two more objects (the clock and the
   * boxed double in it), each a trip to memory on a busy gateway. Read
   * exactly every REFRESH_EVERY reads, so a long synchronous run of charges
   * cannot outrun it (as CoarseClock does).
   */
  now(): number {
    const v = this.v;
    const reads = (v[READS] as number) + 1;
    if (reads >= REFRESH_EVERY) {
      v[READS] = 0;
      return (v[NOW] = Date.now());
    }
    v[READS] = reads;
    return v[NOW] as number;
  }

  /** Sets the coarse time (the book's timer). */
  tick(now: number): void {
    this.v[NOW] = now;
  }

  /** A new share, in the state that sends every charge and check to the book. */
  add(): number {
    if ((this.used + 1) * STRIDE > this.v.length) {
      const grown = new Float64Array(this.v.length * 2);
      grown.set(this.v);
      this.v = grown;
    }
    const i = this.used++;
    this.set(i, -1, -1, 0);
    return i;
  }

  /** True: nothing charged to share `i` can have spent it (a check need not look). */
  passes(i: number): boolean {
    const h = i * STRIDE;
    return (this.v[h + SPENT] as number) <= (this.v[h + CHECK] as number);
  }

  /**
   * Charges `cost` to share `i` if its period is still on at `now`. True: the
   * share is still above half a slice, nothing else to do. False: the book
   * must look (and `current` says whether the cost went in).
   */
  charge(i: number, cost: number, now: number): boolean {
    const h = i * STRIDE;
    const v = this.v;
    if (now >= (v[h + UNTIL] as number)) return false;
    const spent = (v[h + SPENT] as number) + cost;
    v[h + SPENT] = spent;
    return spent <= (v[h + ROOM] as number);
  }

  /** Whether a charge at `now` goes into share `i` (its period is on). */
  current(i: number, now: number): boolean {
    return now < (this.v[i * STRIDE + UNTIL] as number);
  }

  /**
   * How much more share `i` can be charged at `now` before a charge must go
   * to the book (below zero: none, or its period is over).
   */
  headroom(i: number, now: number): number {
    const h = i * STRIDE;
    const v = this.v;
    if (now >= (v[h + UNTIL] as number)) return -1;
    return (v[h + ROOM] as number) - (v[h + SPENT] as number);
  }

  /** When share `i`'s period ends (epoch ms; 0: the book has not set one). */
  until(i: number): number {
    return this.v[i * STRIDE + UNTIL] as number;
  }

  /**
   * Adds `amount` to what share `i` counts as charged, whatever its period:
   * a reservation taken from it, or, below zero, the part of one given back
   * unspent (see BudgetBook.reserve).
   */
  addSpent(i: number, amount: number): void {
    const h = i * STRIDE;
    this.v[h + SPENT] = (this.v[h + SPENT] as number) + amount;
  }

  /**
   * Makes place `i` a reservation (see BudgetBook.reserve) with `left` to
   * spend until `until` (epoch ms); `hold(i, 0, 0)` empties it. A place that
   * holds reservations is never a share.
   */
  hold(i: number, left: number, until: number): void {
    const h = i * STRIDE;
    this.v[h + SPENT] = left;
    this.v[h + UNTIL] = until;
  }

  /** What is left of the reservation at place `i`. */
  held(i: number): number {
    return this.v[i * STRIDE + SPENT] as number;
  }

  /**
   * Spends `cost` from the reservation at place `i` if it is still on at
   * `now` and covers it. False: nothing was spent.
   */
  spend(i: number, cost: number, now: number): boolean {
    const h = i * STRIDE;
    const v = this.v;
    const left = (v[h + SPENT] as number) - cost;
    if (left < 0 || now >= (v[h + UNTIL] as number)) return false;
    v[h + SPENT] = left;
    return true;
  }

  /** What share `i` lets a check pass at (see `set`). */
  checkRoom(i: number): number {
    return this.v[i * STRIDE + CHECK] as number;
  }

  /** What was charged to share `i` since the last take; zeroes it. */
  take(i: number): number {
    const h = i * STRIDE;
    const spent = this.v[h + SPENT] as number;
    this.v[h + SPENT] = 0;
    return spent;
  }

  /**
   * Sets what share `i` allows until `until` (epoch ms): `room` more before
   * a charge must go to the book, `check` before a check must (Infinity:
   * never refuses).
   */
  set(i: number, room: number, check: number, until: number): void {
    const h = i * STRIDE;
    this.v[h + ROOM] = room;
    this.v[h + CHECK] = check;
    this.v[h + UNTIL] = until;
  }
}

import type { DailyRow, EntityRow } from "../contract/spend-batch.js";

/**
 * Which flush partition owns a row: a stable hash (32-bit FNV-1a over the
 * row's identity, UTF-16 code units) modulo the partition count. Every
 * producer computes the same owner for the same database row, so two
 * partitions never write one row and never wait on each other's locks.
 */
export function partitionOf(identity: string, partitions: number): number {
  if (partitions <= 1) return 0;
  return (hashOn(FNV_SEED, identity) >>> 0) % partitions;
}

const SEP = "\u001f";
const SEP_CODE = 0x1f;

/** FNV-1a's starting value. */
export const FNV_SEED = 0x811c9dc5;

/** FNV-1a of `h` continued over `s`. */
export function hashOn(h: number, s: string): number {
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return h;
}

/**
 * FNV-1a of `h` continued over the separator, then `s`: the identity's
 * hash built field by field, without building the identity string.
 */
export function hashField(h: number, s: string): number {
  return hashOn(Math.imul(h ^ SEP_CODE, 0x01000193), s);
}

/** The partition of a hash built with hashOn/hashField. */
export function partitionOfHash(h: number, partitions: number): number {
  return (h >>> 0) % partitions;
}

/**
 * A row's identity: what names one database row (the partition hash input).
 * The reference form: JobWriter hashes the same fields one by one
 * (hashField) without building this string, and the tests hold it to
 * partitionOf over these.
 */
export const entityIdentity = (r: EntityRow): string => r[0] + SEP + r[1] + SEP + r[2];
export const dailyIdentity = (r: DailyRow): string => r.slice(0, 9).join(SEP);

import type { DailyRow, EntityRow } from "../contract/spend-batch.js";

/**
 * Which flush partition writes a row: a stable hash (32-bit FNV-1a over the
 * row's identity, UTF-16 code units) modulo the partition count. An entity
 * row's identity is its kind and ids. A daily row's, in a producer's seal,
 * is its context (date, key, model, group, provider, MCP tool, endpoint), so
 * the daily rows one fact fans out to share a partition
 * (contract/daily-facts.ts); in an idempotent ingest batch, cut as every
 * version has cut it, its kind, id and context. Every producer computes the
 * same partition for the same entity row, so two partitions never write one
 * entity row; a daily row may be written by its context's partition and by
 * its own, which at worst makes one flush wait for the other's commit (both
 * lock rows in one order, so they cannot deadlock).
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
 * A row's partition hash input. The reference form: JobWriter hashes the
 * same fields one by one (hashField) without building this string, and the
 * tests hold it to partitionOf over these.
 */
export const entityIdentity = (r: EntityRow): string => r[0] + SEP + r[1] + SEP + r[2];
/** A daily row's, in a producer's seal: its context's seven strings (date, key, model, group, provider, MCP tool, endpoint). */
export const contextIdentity = (r: DailyRow): string => r.slice(2, 9).join(SEP);
/** A daily row's written as a row (sealBatches: idempotent ingest batches): its kind, id and context. */
export const dailyIdentity = (r: DailyRow): string => r.slice(0, 9).join(SEP);

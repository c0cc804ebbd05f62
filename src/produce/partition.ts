import type { DailyRow, EntityRow } from "../contract/spend-batch.js";

/**
 * Which flush partition owns a row: a stable hash (32-bit FNV-1a over the
 * row's identity, UTF-16 code units) modulo the partition count. Every
 * producer computes the same owner for the same database row, so two
 * partitions never write one row and never wait on each other's locks.
 */
export function partitionOf(identity: string, partitions: number): number {
  if (partitions <= 1) return 0;
  let h = 0x811c9dc5;
  for (let i = 0; i < identity.length; i++) {
    h ^= identity.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return (h >>> 0) % partitions;
}

const SEP = "\u001f";

/** A row's identity: what names one database row (the partition hash input). */
export const entityIdentity = (r: EntityRow): string => r[0] + SEP + r[1] + SEP + r[2];
export const dailyIdentity = (r: DailyRow): string => r.slice(0, 9).join(SEP);

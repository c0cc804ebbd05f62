/**
 * Whether V8 would hold `text` two bytes a code unit: it has a code unit past
 * U+00FF (what a latin1 round trip cannot carry). What the seal's job byte
 * cap counts (sealer.ts, MAX_JOB_TEXT_BYTES).
 */
export function isTwoByte(text: string): boolean {
  return Buffer.from(text, "latin1").toString("latin1") !== text;
}

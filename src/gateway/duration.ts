/**
 * LiteLLM's durations ("30s", "15m", "1h", "30d", "2w", "1mo"): a whole
 * number and a unit. Months are calendar months (the same day of the month,
 * clamped to the month's last day), as LiteLLM counts them.
 */

const UNIT_MS: Record<string, number> = {
  s: 1_000,
  m: 60_000,
  h: 3_600_000,
  d: 86_400_000,
  w: 7 * 86_400_000,
};

/** Longest duration accepted: ten years, so an expiry is always a valid date. */
const MAX_MS = 3_660 * 86_400_000;

export const DURATION_FORMAT =
  'a whole number and a unit: s, m, h, d, w or mo (e.g. "30s", "1h", "30d", "1mo")';

/** When a key given `duration` at `nowMs` expires (epoch ms), or a sentence saying what is wrong. */
export function expiryAfter(
  duration: string,
  nowMs: number,
): { ok: true; at: number } | { ok: false; message: string } {
  const m = /^([1-9][0-9]{0,6})(s|m|h|d|w|mo)$/.exec(duration);
  if (m === null)
    return {
      ok: false,
      message: `duration ${JSON.stringify(duration.slice(0, 40))} is not ${DURATION_FORMAT}`,
    };
  const n = Number(m[1]);
  const unit = m[2] ?? "";
  let at: number;
  if (unit === "mo") {
    const d = new Date(nowMs);
    const day = d.getUTCDate();
    const target = new Date(nowMs);
    target.setUTCDate(1);
    target.setUTCMonth(target.getUTCMonth() + n);
    const last = new Date(
      Date.UTC(target.getUTCFullYear(), target.getUTCMonth() + 1, 0),
    ).getUTCDate();
    target.setUTCDate(Math.min(day, last));
    at = target.getTime();
  } else {
    at = nowMs + n * (UNIT_MS[unit] ?? 0);
  }
  if (at - nowMs > MAX_MS)
    return { ok: false, message: `duration ${duration} is longer than ten years` };
  return { ok: true, at };
}

import { addDuration, BudgetDurationError, parseDuration } from "../budget/duration.js";

/**
 * A key's `duration` (LiteLLM's "30s", "15m", "1h", "30d", "2w", "1mo"): the
 * same durations budgets use (budget/duration.ts), read the same way.
 */

/** Longest duration accepted: ten years, so an expiry is always a valid date. */
const MAX_MS = 3_660 * 86_400_000;

export const DURATION_FORMAT =
  'a whole number and a unit: s, m, h, d, w or mo (e.g. "30s", "1h", "30d", "1mo")';

/** When a key given `duration` at `nowMs` expires (epoch ms), or a sentence saying what is wrong. */
export function expiryAfter(
  duration: string,
  nowMs: number,
): { ok: true; at: number } | { ok: false; message: string } {
  let at: number;
  try {
    at = addDuration(new Date(nowMs), parseDuration(duration)).getTime();
  } catch (err) {
    if (!(err instanceof BudgetDurationError)) throw err;
    return {
      ok: false,
      message: `duration ${JSON.stringify(duration.slice(0, 40))} is not ${DURATION_FORMAT}`,
    };
  }
  if (!Number.isFinite(at) || at - nowMs > MAX_MS)
    return { ok: false, message: `duration ${duration} is longer than ten years` };
  return { ok: true, at };
}

/**
 * LiteLLM's durations, for budgets and keys: `<n><unit>` with unit s, m, h,
 * d, w or mo ("30s", "1h", "1d", "2w", "30d", "1mo"). A period of n months
 * ends on the same day of the month (UTC), clamped to the month's last day.
 */
export interface BudgetDuration {
  n: number;
  unit: "s" | "m" | "h" | "d" | "w" | "mo";
}

const FORM = /^([1-9]\d{0,6})(s|m|h|d|w|mo)$/;
const MS = { s: 1_000, m: 60_000, h: 3_600_000, d: 86_400_000, w: 604_800_000 } as const;

export class BudgetDurationError extends Error {
  readonly code = "BUDGET_DURATION";
  constructor(text: string) {
    super(
      `budget_duration must be a positive whole number and a unit (s, m, h, d, w, mo), e.g. "30d" or "1mo"; got ${JSON.stringify(text.slice(0, 40))}`,
    );
    this.name = "BudgetDurationError";
  }
}

export function parseDuration(text: string): BudgetDuration {
  const m = FORM.exec(text);
  if (m === null) throw new BudgetDurationError(text);
  return { n: Number(m[1]), unit: m[2] as BudgetDuration["unit"] };
}

/** `from` plus the duration, in UTC. */
export function addDuration(from: Date, d: BudgetDuration): Date {
  if (d.unit !== "mo") return new Date(from.getTime() + d.n * MS[d.unit]);
  const y = from.getUTCFullYear();
  const month = from.getUTCMonth() + d.n;
  const lastDay = new Date(Date.UTC(y, month + 1, 0)).getUTCDate();
  return new Date(
    Date.UTC(
      y,
      month,
      Math.min(from.getUTCDate(), lastDay),
      from.getUTCHours(),
      from.getUTCMinutes(),
      from.getUTCSeconds(),
      from.getUTCMilliseconds(),
    ),
  );
}

/**
 * The period `at` falls in, for a budget whose period began at `start` and
 * repeats every `d`: periods follow each other with no gap, so a boundary is
 * the same instant for every gateway, whichever saw the previous one.
 */
export function periodAt(start: Date, d: BudgetDuration, at: Date): { start: Date; end: Date } {
  let s = start;
  let e = addDuration(s, d);
  if (d.unit !== "mo" && at.getTime() >= e.getTime()) {
    // Fixed-length units: jump straight there, however many periods passed.
    const len = e.getTime() - s.getTime();
    const k = Math.floor((at.getTime() - s.getTime()) / len);
    s = new Date(s.getTime() + k * len);
    e = new Date(s.getTime() + len);
  }
  // Months: the k-th period counted from `start`, so a 31st does not drift to the 28th.
  for (let k = 1; at.getTime() >= e.getTime(); k++) {
    s = e;
    e = addDuration(start, { n: d.n * (k + 1), unit: d.unit });
  }
  return { start: s, end: e };
}

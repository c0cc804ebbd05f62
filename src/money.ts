/**
 * Money is an integer count of picodollars (10^-12 USD) from the moment it
 * enters the system until PostgreSQL stores it as NUMERIC(38,12). Floats are
 * never summed: the reference system's float sums drift, and "exact" is the
 * promise here.
 *
 * On the producer's hot path a cost fits in a JS number as an integer (the
 * validator caps one event at MAX_EVENT_USD, far below 2^53 picodollars), and
 * aggregates spill into a bigint before they could lose precision.
 */

export const PICO_PER_USD = 1_000_000_000_000;
export const SPEND_SCALE = 12;

/** Above this a cost in picodollars could not be added to another exactly as a number. */
export const MAX_SAFE_PICO = 2 ** 52;

/** Largest cost one event may carry: keeps every per-event figure an exact JS integer. */
export const MAX_EVENT_USD = 4_000;

const DECIMAL = /^(\d{1,16})(?:\.(\d{1,12}))?$/;

export class MoneyError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "MoneyError";
  }
}

/**
 * A USD amount given as a number becomes picodollars, rounded half away from
 * zero at the 12th decimal: a float cost is already an approximation made by
 * the gateway's price arithmetic, so the 13th decimal carries no information.
 * Callers validate range and sign first.
 */
export function usdNumberToPico(usd: number): number {
  return Math.round(usd * PICO_PER_USD);
}

/**
 * A USD amount given as a decimal string is taken exactly; more than 12
 * decimals would need rounding, which an explicit string asks us not to do.
 */
export function usdStringToPico(usd: string): bigint {
  const m = DECIMAL.exec(usd);
  if (m === null) {
    throw new MoneyError(
      `not a non-negative decimal with at most 12 fractional digits: ${JSON.stringify(usd.slice(0, 40))}`,
    );
  }
  const whole = m[1] ?? "0";
  const frac = (m[2] ?? "").padEnd(SPEND_SCALE, "0");
  return BigInt(whole) * BigInt(PICO_PER_USD) + BigInt(frac);
}

// Below this many whole dollars every picodollar count is an exact integer number (< 2^53).
const FAST_MAX_WHOLE_USD = 9_000;
const POW10 = [1, 10, 100, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12];

/**
 * usdStringToPico for the request path: the same strings accepted, the same
 * errors, the same exact value, but as a number and without a regex or
 * BigInt for amounts under 9,000 USD. Other input takes usdStringToPico
 * (which throws for what it refuses); above 2^53 picodollars the number may
 * round, which no caller accepts anyway (one event is at most MAX_EVENT_USD).
 */
export function usdStringToPicoNumber(usd: string): number {
  const n = usd.length;
  let i = 0;
  let whole = 0;
  for (; i < n; i++) {
    const c = usd.charCodeAt(i) - 48;
    if (c < 0 || c > 9) break;
    whole = whole * 10 + c;
  }
  const wholeDigits = i;
  let frac = 0;
  let fracDigits = 0;
  let ok = wholeDigits >= 1 && wholeDigits <= 16;
  if (ok && i < n) {
    if (usd.charCodeAt(i) !== 46) ok = false; // "."
    for (i++; ok && i < n; i++) {
      const c = usd.charCodeAt(i) - 48;
      if (c < 0 || c > 9) ok = false;
      frac = frac * 10 + c;
      fracDigits++;
    }
    if (fracDigits < 1 || fracDigits > SPEND_SCALE) ok = false;
  }
  if (!ok || whole > FAST_MAX_WHOLE_USD) return Number(usdStringToPico(usd));
  return whole * PICO_PER_USD + frac * (POW10[SPEND_SCALE - fracDigits] as number);
}

/** Picodollars as the decimal text PostgreSQL's NUMERIC parses exactly. */
export function picoToDecimal(pico: bigint): string {
  const negative = pico < 0n;
  const abs = negative ? -pico : pico;
  const digits = abs.toString().padStart(SPEND_SCALE + 1, "0");
  const whole = digits.slice(0, digits.length - SPEND_SCALE);
  const frac = digits.slice(digits.length - SPEND_SCALE);
  return `${negative ? "-" : ""}${whole}.${frac}`;
}

/**
 * picoToDecimal of a picodollar count given as digits (what spend jobs carry),
 * without a bigint: the same text for the same value. The flush writes every
 * row's spend through it.
 */
export function picoDigitsToDecimal(digits: string): string {
  // Leading zeros would print as part of the whole number; rare, so the exact path.
  if (digits.length > 1 && digits.charCodeAt(0) === 48) return picoToDecimal(BigInt(digits));
  const padded = digits.length > SPEND_SCALE ? digits : digits.padStart(SPEND_SCALE + 1, "0");
  const cut = padded.length - SPEND_SCALE;
  return `${padded.slice(0, cut)}.${padded.slice(cut)}`;
}

/** The inverse of picoToDecimal, for reading NUMERIC back as text. */
export function decimalToPico(text: string): bigint {
  const negative = text.startsWith("-");
  const body = negative ? text.slice(1) : text;
  const [whole = "0", frac = ""] = body.split(".");
  if (frac.length > SPEND_SCALE) throw new MoneyError(`more than ${SPEND_SCALE} decimals: ${text}`);
  const pico = BigInt(whole) * BigInt(PICO_PER_USD) + BigInt(frac.padEnd(SPEND_SCALE, "0"));
  return negative ? -pico : pico;
}

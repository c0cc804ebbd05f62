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
  readonly code = "MONEY";
  constructor(message: string) {
    super(message);
    this.name = "MoneyError";
  }
}

/**
 * A USD amount given as a number becomes picodollars by one rule: the number
 * is taken as the shortest decimal that reads back as it (what String(x) and
 * JSON print, so what the sender wrote or meant), and that decimal is rounded
 * half up (away from zero) at the 12th decimal. So 8.176985e-7 is
 * 0.000000817699 and 4.880395e-7 is 0.000000488040: one decimal shape always
 * rounds one way, which `Math.round(x * 1e12)` does not promise (the binary
 * product of either lands on its own side of .5). A float cost is already an
 * approximation made by the sender's price arithmetic, so the 13th decimal
 * carries no information; rounding it by a fixed rule keeps the same input
 * charged the same everywhere. Callers validate range and sign first (a
 * negative number rounds symmetrically); the result is exact up to 2^53
 * picodollars, far above MAX_EVENT_USD. Throws MoneyError for NaN or infinity.
 */
export function usdNumberToPico(usd: number): number {
  // Fast path, correct by this bound. Let y = fl(usd * 1e12) and D the exact
  // value to round (the printed decimal times 10^12). The multiply is
  // correctly rounded: |y - usd*10^12| <= 2^-53 * usd*10^12. The printed
  // decimal reads back as usd, so it lies within half an ulp of it:
  // |D - usd*10^12| <= 2^-53 * usd*10^12 (usd normal, as y >= 1/4 makes it).
  // Hence |D - y| <= 2^-52 * usd*10^12 < 2^-51 * y = margin. For y >= 1/4,
  // y - floor(y) and then - 0.5 are exact (y's last bit is at least 2^-54), so
  // |g| is y's exact distance to the nearest half-integer; when it exceeds the
  // margin, D lies strictly between the same two half-integers as y and both
  // round to Math.round(y) (which is exact). For y < 1/4 the test passes and
  // Math.round gives 0, as it must: D is then below 1/2 (within a hair of y,
  // or of 0 for a subnormal usd). As |g| <= 1/2, passing implies y < 2^50;
  // NaN, infinities and negatives never pass.
  const y = usd * PICO_PER_USD;
  const g = y - Math.floor(y) - 0.5;
  const margin = y * 2 ** -51;
  if (y >= 0 && (g > margin || g < -margin)) return Math.round(y);
  return printedDecimalToPico(usd);
}

/** usdNumberToPico's rule done exactly, on the digits String(x) prints. */
function printedDecimalToPico(usd: number): number {
  if (!Number.isFinite(usd)) throw new MoneyError(`not a finite USD amount: ${String(usd)}`);
  let text = String(usd);
  const negative = text.startsWith("-");
  if (negative) text = text.slice(1);
  let exponent = 0;
  const e = text.indexOf("e");
  if (e >= 0) {
    exponent = Number(text.slice(e + 1));
    text = text.slice(0, e);
  }
  const dot = text.indexOf(".");
  const digits = dot < 0 ? text : text.slice(0, dot) + text.slice(dot + 1);
  // The value is digits * 10^(exponent - decimals); in picodollars, digits * 10^shift.
  const shift = exponent - (dot < 0 ? 0 : text.length - dot - 1) + SPEND_SCALE;
  let pico: number;
  if (shift >= 0) {
    pico = Number(digits + "0".repeat(shift));
  } else {
    const kept = digits.length + shift;
    if (kept < 0) {
      pico = 0; // even the first dropped digit is a leading zero
    } else {
      const head = digits.slice(0, kept);
      // Half up: the first dropped digit alone decides (5 or more is at least half).
      const up = digits.charCodeAt(kept) >= 53;
      if (head.length <= 15) pico = Number(head === "" ? "0" : head) + (up ? 1 : 0);
      else pico = Number(BigInt(head) + (up ? 1n : 0n));
    }
  }
  return negative ? -pico : pico;
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

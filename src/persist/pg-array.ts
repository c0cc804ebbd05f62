/**
 * PostgreSQL array literals ('{"a","b"}'), built here rather than by the
 * driver. A flush sends ~20 columns of up to max_rows_per_transaction values; passed as arrays,
 * Prisma type-checks and copies every element before `pg` escapes it again,
 * which cost more CPU than PostgreSQL spent writing the rows. One string per
 * column crosses both layers untouched, and PostgreSQL parses exactly the
 * text `pg` would have produced (`$n::text[]` accepts either).
 */

// Inside a quoted element only `"` and `\` need a backslash (array_in's rules).
const NEEDS_ESCAPE = /["\\]/;
const ESCAPES = /["\\]/g;

/** Every element double-quoted: ids may hold commas, braces, spaces or the word NULL. */
export function textArrayLiteral(values: readonly string[]): string {
  let out = "{";
  for (let i = 0; i < values.length; i++) {
    const v = values[i] as string;
    if (i > 0) out += ",";
    out += NEEDS_ESCAPE.test(v) ? `"${v.replace(ESCAPES, "\\$&")}"` : `"${v}"`;
  }
  return out + "}";
}

/**
 * Elements written bare: only for text already known to be a number
 * (int8 counters, NUMERIC from picoToDecimal), which holds no quote,
 * comma, brace or space.
 */
export function numericArrayLiteral(values: readonly string[]): string {
  return `{${values.join(",")}}`;
}

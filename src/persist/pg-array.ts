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
  if (values.length === 0) return "{}";
  // Almost always nothing to escape: one join then builds the literal in one
  // allocation, where appending element by element made a string per step.
  for (const v of values) if (NEEDS_ESCAPE.test(v)) return escapedTextArrayLiteral(values);
  return `{"${values.join('","')}"}`;
}

function escapedTextArrayLiteral(values: readonly string[]): string {
  const quoted = values.map((v) => `"${v.replace(ESCAPES, "\\$&")}"`);
  return `{${quoted.join(",")}}`;
}

/**
 * Elements written bare: only for values already known to be numbers
 * (int8 counters, picodollar digits), which hold no quote, comma, brace or
 * space. Numbers are joined as they are, never first made strings one by one.
 */
export function numericArrayLiteral(values: readonly (string | number)[]): string {
  return `{${values.join(",")}}`;
}

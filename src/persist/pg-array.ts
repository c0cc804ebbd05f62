/**
 * PostgreSQL array literals ('{"a","b"}'), built here rather than by the
 * driver. A flush sends ~20 columns of up to max_rows_per_transaction values; passed as arrays,
 * Prisma type-checks and copies every element before `pg` escapes it again,
 * which cost more CPU than PostgreSQL spent writing the rows. One string per
 * column crosses both layers untouched, and PostgreSQL parses exactly the
 * text `pg` would have produced (`$n::text[]` accepts either).
 */

// Inside a quoted element only `"` and `\` need a backslash (array_in's rules).
const ESCAPES = /["\\]/g;
// Bare, an element must hold none of array_in's delimiters, quotes, escapes
// or the whitespace it trims, and be neither empty nor the word NULL.
const BARE = /^[^{}",\\ \t\n\r\v\f]+$/;

function bare(v: string): boolean {
  return BARE.test(v) && !(v.length === 4 && v.toLowerCase() === "null");
}

/**
 * Elements bare where array_in reads them back as they are, quoted
 * otherwise (empty strings, NULL, spaces, commas, braces, quotes). Bare is
 * shorter, and quotes are what cost most in the literal's trips through
 * Prisma's JSON encoding of raw parameters (each one escaped, then parsed).
 */
export function textArrayLiteral(values: readonly string[]): string {
  if (values.length === 0) return "{}";
  // Usually every element is bare. Checked on the joined text, a few native
  // scans decide it for the whole column, where a test per element was most
  // of the literal's cost (a flush builds ~16 columns of up to 100,000).
  const joined = values.join(",");
  if (allBare(joined, values.length)) return `{${joined}}`;
  const parts = values.map((v) => (bare(v) ? v : `"${v.replace(ESCAPES, "\\$&")}"`));
  return `{${parts.join(",")}}`;
}

// A delimiter, quote, escape or trimmed whitespace anywhere in the joined text.
const UNSAFE = /[{}"\\ \t\n\r\v\f]/;
// An empty element, or one that is the word NULL, between the joining commas.
const EMPTY_OR_NULL = /(?:^|,)(?:null)?(?:,|$)/i;

/**
 * Whether `joined`, `count` elements joined by commas, holds only bare
 * elements: no unsafe character, no element empty or NULL, and exactly the
 * joining commas (one more would be a comma inside an element).
 */
function allBare(joined: string, count: number): boolean {
  if (UNSAFE.test(joined) || EMPTY_OR_NULL.test(joined)) return false;
  let commas = 0;
  for (let at = joined.indexOf(","); at !== -1; at = joined.indexOf(",", at + 1)) commas++;
  return commas === count - 1;
}

/**
 * Elements written bare: only for values already known to be numbers
 * (int8 counters, picodollar digits), which hold no quote, comma, brace or
 * space. Numbers are joined as they are, never first made strings one by one.
 */
export function numericArrayLiteral(values: readonly (string | number)[]): string {
  return `{${values.join(",")}}`;
}

/**
 * Hides credentials in free text (an error message, a log line) before it
 * leaves the process. It is deliberately conservative: when it cannot tell
 * where a secret ends it hides more, and it never throws.
 *
 * What it hides, as `***`:
 * - a URL's user information, `scheme://user:pass@host` → `scheme://***@host`.
 *   The password may hold `/ ? # : @ %` and spaces, none of which a URL parser
 *   reads back correctly unless encoded, so the user information runs from
 *   `://` to the last `@` on the line that is followed by something host-like.
 * - the value of any `…password=`, `…passwd=`, `…passphrase=`, `…pwd=`,
 *   `pass=`, `…secret=` or `…token=` pair: libpq key=value strings
 *   (`host=db password='a b'`) and query strings (`?password=…`,
 *   `sslpassword=…`). A quoted value runs to its closing quote; an unquoted one
 *   to the next unescaped whitespace, so in a query string the parameters
 *   after it are hidden too.
 *
 * Left to right, the first of these to start claims its span: a `key=` or a
 * `://` inside a password already hidden is part of that password, not the
 * start of another secret (which could run past the host).
 *
 * It scans rather than parses: a parser reads one well-formed connection
 * string, while this must find credentials inside any text, in exactly the
 * malformed strings (a raw `/` or space in a password) that parsers misread
 * or refuse. (pg-connection-string, for one, cannot read key=value strings,
 * and reads the files `sslcert`, `sslkey` and `sslrootcert` name.)
 */

const MASK = "***";

/** Returned when the scan itself failed: nothing of the input can be trusted to be safe. */
const FAILED = "[redacted]";

const SCHEME = /[A-Za-z][A-Za-z0-9+.-]*:\/\//g;
const SECRET_KEY =
  /(?<![A-Za-z0-9_.-])(?:[A-Za-z0-9_.-]*(?:password|passwd|passphrase|pwd|secret|token)|pass)\s*=/gi;
/** A character a host (name, IPv4, [IPv6], or an earlier mask) can start with. */
const HOST_START = /[A-Za-z0-9[_*]/;

export function redact(text: string): string {
  try {
    const s = typeof text === "string" ? text : String(text);
    // Every form hidden here needs one of these: a URL's credentials end with `@`, pairs use `=`.
    if (!s.includes("@") && !s.includes("=")) return s;
    return apply(s, spans(s));
  } catch {
    return FAILED;
  }
}

interface Candidate {
  at: number;
  span: () => [number, number] | undefined;
}

function spans(s: string): [number, number][] {
  const at = new UserinfoEnds(s);
  const candidates: Candidate[] = [];
  for (const m of s.matchAll(SCHEME)) {
    candidates.push({ at: m.index, span: () => at.userinfo(m.index + m[0].length) });
  }
  for (const m of s.matchAll(SECRET_KEY)) {
    // In a query string a quote is a character like any other, not libpq's quoting.
    const inQuery = s[m.index - 1] === "?" || s[m.index - 1] === "&";
    candidates.push({
      at: m.index,
      span: () => valueSpan(s, m.index + m[0].length, !inQuery),
    });
  }
  candidates.sort((a, b) => a.at - b.at);
  const hide: [number, number][] = [];
  let claimedUntil = -1;
  for (const c of candidates) {
    if (c.at < claimedUntil) continue;
    const span = c.span();
    if (span === undefined) continue;
    hide.push(span);
    claimedUntil = span[1];
  }
  return hide;
}

/** `scheme://` up to the last host-like `@` of the same line (the last `@` at all if none is). */
class UserinfoEnds {
  private lineEnd = -1;
  private lastHostAt = -1;
  private lastAt = -1;

  constructor(private readonly s: string) {}

  /** The user information of a URL whose `://` ends at `start`, if it has any. */
  userinfo(start: number): [number, number] | undefined {
    const s = this.s;
    if (start > this.lineEnd) {
      // One right-to-left pass per line, so many URLs on a long line stay linear.
      const lineStart = lastLineBreak(s, start - 1) + 1;
      this.lineEnd = nextLineBreak(s, start);
      this.lastHostAt = -1;
      this.lastAt = -1;
      for (let i = this.lineEnd - 1; i >= lineStart; i--) {
        if (s[i] !== "@") continue;
        if (this.lastAt === -1) this.lastAt = i;
        if (HOST_START.test(s[i + 1] ?? "")) {
          this.lastHostAt = i;
          break;
        }
      }
    }
    const end =
      this.lastHostAt >= start ? this.lastHostAt : this.lastAt >= start ? this.lastAt : -1;
    return end > start ? [start, end] : undefined;
  }
}

/** The value after a secret-looking `key=` that ends at `from`. */
function valueSpan(s: string, from: number, quoting: boolean): [number, number] | undefined {
  let i = from;
  // libpq allows blanks around `=`.
  while (i < s.length && (s[i] === " " || s[i] === "\t")) i++;
  const start = i;
  const quote = s[i];
  if (quoting && (quote === "'" || quote === '"')) {
    i = closingQuote(s, i + 1, quote);
  } else {
    while (i < s.length && !isBlank(s[i])) i += s[i] === "\\" ? 2 : 1;
  }
  const end = Math.min(i, s.length);
  return end > start ? [start, end] : undefined;
}

/**
 * Where a quoted value that opened before `from` ends (just past its quote).
 * libpq's rule is the first quote not escaped by a backslash pair; in text
 * that was JSON-escaped, `\\'` (an escaped quote, escaped again) reads as
 * a closing quote by that rule. So the value ends at the first quote with no
 * backslash before it at all, which is never earlier than libpq's end; only
 * when the line has none does libpq's rule decide, then the end of the line.
 */
function closingQuote(s: string, from: number, quote: string): number {
  let libpq = -1;
  for (let i = from; i < s.length && !isLineBreak(s[i]); i++) {
    if (s[i] === "\\") {
      i++;
      continue;
    }
    if (s[i] === quote) {
      libpq = i + 1;
      break;
    }
  }
  for (let i = from; i < s.length && !isLineBreak(s[i]); i++) {
    if (s[i] === quote && s[i - 1] !== "\\") return i + 1;
  }
  return libpq !== -1 ? libpq : nextLineBreak(s, from);
}

/** Replaces each maximal run of hidden characters with one mask. */
function apply(s: string, hide: [number, number][]): string {
  if (hide.length === 0) return s;
  hide.sort((a, b) => a[0] - b[0]);
  let out = "";
  let pos = 0;
  let curStart = -1;
  let curEnd = -1;
  for (const [start, end] of hide) {
    if (curStart !== -1 && start <= curEnd) {
      curEnd = Math.max(curEnd, end);
      continue;
    }
    if (curStart !== -1) {
      out += s.slice(pos, curStart) + MASK;
      pos = curEnd;
    }
    curStart = start;
    curEnd = end;
  }
  out += s.slice(pos, curStart) + MASK + s.slice(curEnd);
  return out;
}

function isLineBreak(c: string | undefined): boolean {
  return c === "\n" || c === "\r";
}

function isBlank(c: string | undefined): boolean {
  return c === undefined || /\s/.test(c);
}

function lastLineBreak(s: string, before: number): number {
  return Math.max(s.lastIndexOf("\n", before), s.lastIndexOf("\r", before));
}

function nextLineBreak(s: string, from: number): number {
  const n = s.indexOf("\n", from);
  const r = s.indexOf("\r", from);
  if (n === -1) return r === -1 ? s.length : r;
  return r === -1 ? n : Math.min(n, r);
}

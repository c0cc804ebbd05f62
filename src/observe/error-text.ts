/**
 * An error as one line for a log field, a report or a readiness answer.
 * Prisma wraps a driver error in several lines that start with where it was
 * called ("Invalid `prisma.$queryRawUnsafe()` invocation:"), which says
 * nothing to an operator and split the message across lines of a readiness
 * body: that preamble is dropped and whitespace runs, newlines included,
 * become one space. Capped, since a driver may quote a whole statement.
 */
const PRISMA_PREAMBLE = /^\s*Invalid `[^`]*` invocation:?\s*/;
const MAX_CHARS = 1_000;

export function errorText(err: unknown): string {
  const message = err instanceof Error ? err.message : String(err);
  const text = message.replace(PRISMA_PREAMBLE, "").replace(/\s+/g, " ").trim();
  return text.length > MAX_CHARS ? `${text.slice(0, MAX_CHARS)}…` : text;
}

/**
 * Decides which of a stream of errors to log: an error unlike the last is
 * logged at once; the same one again only once `everyMs` have passed since it
 * was last logged, with how many times it recurred in between (`repeated`).
 */
export class RepeatedErrors {
  private last = "";
  private loggedAt = 0;
  private repeated = 0;

  constructor(private readonly everyMs: number) {}

  /** The fields to log for `text` now, or undefined to stay quiet. */
  note(text: string, now = Date.now()): { err: string; repeated?: number } | undefined {
    if (text === this.last && now - this.loggedAt < this.everyMs) {
      this.repeated++;
      return undefined;
    }
    const repeated = text === this.last ? this.repeated : 0;
    this.last = text;
    this.loggedAt = now;
    this.repeated = 0;
    return repeated > 0 ? { err: text, repeated } : { err: text };
  }
}

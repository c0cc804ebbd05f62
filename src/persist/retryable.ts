/**
 * Which database failures are worth retrying, decided in one place.
 * Deadlocks and serialization failures resolve on retry; lost connections
 * (PostgreSQL restarted, pg_terminate_backend) resolve once a new connection
 * is made. Anything else is a bug or bad data and should surface.
 */
export type RetryReason = "deadlock" | "serialization" | "connection" | "timeout";

const SQLSTATE_REASON: Record<string, RetryReason> = {
  "40P01": "deadlock",
  "40001": "serialization",
  "57P01": "connection", // admin_shutdown (pg_terminate_backend, restart)
  "57P02": "connection", // crash_shutdown
  "57P03": "connection", // cannot_connect_now
};

const PRISMA_REASON: Record<string, RetryReason> = {
  P2034: "serialization", // write conflict or deadlock
  P2028: "timeout", // transaction API error (expired, closed)
  P2024: "timeout", // pool timeout
  P1001: "connection",
  P1017: "connection",
};

const NODE_CONNECTION = new Set(["ECONNRESET", "ECONNREFUSED", "EPIPE", "ETIMEDOUT", "ENOTCONN"]);
const CONNECTION_TEXT =
  /Connection terminated|terminating connection|Client has encountered a connection error|connection is closed|Connection ended/i;

export function retryReason(err: unknown): RetryReason | undefined {
  const seen = new Set<unknown>();
  let e: unknown = err;
  while (typeof e === "object" && e !== null && !seen.has(e)) {
    seen.add(e);
    const rec = e as Record<string, unknown>;
    for (const field of ["code", "originalCode", "sqlState"]) {
      const code = rec[field];
      if (typeof code === "string") {
        const r =
          SQLSTATE_REASON[code] ??
          PRISMA_REASON[code] ??
          (NODE_CONNECTION.has(code) ? "connection" : undefined);
        if (r !== undefined) return r;
        if (code.startsWith("08")) return "connection";
      }
    }
    const kind = rec.kind;
    if (kind === "TransactionWriteConflict") return "serialization";
    if (typeof rec.message === "string" && CONNECTION_TEXT.test(rec.message)) return "connection";
    e = rec.cause;
  }
  return undefined;
}

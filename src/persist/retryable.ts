/**
 * Which database failures are worth retrying, decided in one place.
 * Deadlocks and serialization failures resolve on retry; lost connections
 * (PostgreSQL restarted, pg_terminate_backend) resolve once a new connection
 * is made; a lock or statement timeout once the session holding the row lets
 * go. Anything else is a bug or bad data and should surface.
 */
export type RetryReason = "deadlock" | "serialization" | "connection" | "timeout" | "lock";

const SQLSTATE_REASON: Record<string, RetryReason> = {
  "40P01": "deadlock",
  "40001": "serialization",
  "57P01": "connection", // admin_shutdown (pg_terminate_backend, restart)
  "57P02": "connection", // crash_shutdown
  "57P03": "connection", // cannot_connect_now
  "55P03": "lock", // lock_not_available: lock_timeout, a row another session holds
  "57014": "timeout", // query_canceled: statement_timeout
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

/**
 * The error and the errors it wraps: its `cause` chain, and the driver's
 * error a Prisma raw query failure carries in `meta.driverAdapterError`
 * (where the SQLSTATE of a failed $executeRaw is: its own code is P2010).
 */
function* chain(err: unknown): Generator<Record<string, unknown>> {
  const seen = new Set<unknown>();
  const todo: unknown[] = [err];
  while (todo.length > 0) {
    const e = todo.shift();
    if (typeof e !== "object" || e === null || seen.has(e)) continue;
    seen.add(e);
    const rec = e as Record<string, unknown>;
    yield rec;
    todo.push(rec.cause);
    const meta = rec.meta as Record<string, unknown> | undefined;
    if (typeof meta === "object" && meta !== null) todo.push(meta.driverAdapterError);
  }
}

export function retryReason(err: unknown): RetryReason | undefined {
  for (const rec of chain(err)) {
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
  }
  return undefined;
}

const SQLSTATE = /^(?=.*\d)[0-9A-Z]{5}$/;
const PRISMA_CODE = /^P[1-6]\d{3}$/;

/** The PostgreSQL SQLSTATE an error carries, wherever the layers above put it. */
export function sqlStateOf(err: unknown): string | undefined {
  for (const rec of chain(err)) {
    for (const field of ["originalCode", "sqlState", "code"]) {
      const code = rec[field];
      // Five characters with a digit (Node's EPIPE has none); Prisma's own
      // codes (P1000-P6999) are not PostgreSQL's.
      if (typeof code === "string" && SQLSTATE.test(code) && !PRISMA_CODE.test(code)) return code;
    }
  }
  return undefined;
}

/**
 * A refusal caused by the rows themselves, which no retry can fix and which
 * isolating the rows can: cardinality (21: two rows PostgreSQL sees as one),
 * data exceptions (22: an encoding, a number out of range), integrity
 * constraints (23) and program limits (54: an index row too large). Anything
 * else (a lost connection, a full disk, a missing table) is not the rows'
 * fault: setting rows aside for it would set aside good spend.
 */
export interface StorageRefusal {
  sqlState: string;
  message: string;
}

const DATA_CLASSES = new Set(["21", "22", "23", "54"]);

export function storageRefusal(err: unknown): StorageRefusal | undefined {
  const sqlState = sqlStateOf(err);
  if (sqlState === undefined || !DATA_CLASSES.has(sqlState.slice(0, 2))) return undefined;
  let message = "";
  for (const rec of chain(err)) {
    const m = rec.originalMessage ?? rec.message;
    if (typeof m === "string" && rec.originalCode === sqlState) {
      message = m;
      break;
    }
    if (message === "" && typeof m === "string") message = m;
  }
  return { sqlState, message: message.slice(0, 2_000) };
}

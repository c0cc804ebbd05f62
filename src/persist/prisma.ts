import { PrismaPg } from "@prisma/adapter-pg";
import { PrismaClient } from "../generated/prisma/client.js";

export type Db = PrismaClient;
/** The client handed to an interactive transaction's callback. */
export type Tx = Omit<
  PrismaClient,
  "$connect" | "$disconnect" | "$on" | "$transaction" | "$extends"
>;

/**
 * Prisma 7 with the `pg` driver adapter: no native query engine, so it runs on
 * machines that reach only the npm registry. `max` bounds this process's pool.
 */
export function createDb(databaseUrl: string, opts: { max?: number } = {}): Db {
  const adapter = new PrismaPg({
    connectionString: databaseUrl,
    max: opts.max ?? 5,
    // Client-side, so nothing is asked of PostgreSQL (a pooler such as
    // PgBouncer refuses unknown startup parameters): a server that accepts
    // connections and answers nothing fails a new connection after 10 s, and
    // TCP keepalive finds a dead peer under an idle pooled one.
    connectionTimeoutMillis: CONNECT_TIMEOUT_MS,
    keepAlive: true,
  });
  return new PrismaClient({ adapter });
}

const CONNECT_TIMEOUT_MS = 10_000;

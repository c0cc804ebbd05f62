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
  const adapter = new PrismaPg({ connectionString: databaseUrl, max: opts.max ?? 5 });
  return new PrismaClient({ adapter });
}

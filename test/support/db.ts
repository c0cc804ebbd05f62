import { randomBytes } from "node:crypto";
import pg from "pg";
import { migrate } from "../../src/persist/migrate.js";
import { createDb, type Db } from "../../src/persist/prisma.js";

const BASE_URL = process.env.TEST_DATABASE_URL ?? "postgresql://postgres@127.0.0.1:5432/postgres";

export interface TestDatabase {
  name: string;
  url: string;
  db: Db;
  drop(): Promise<void>;
}

function urlFor(name: string): string {
  const u = new URL(BASE_URL);
  u.pathname = `/${name}`;
  return u.toString();
}

async function admin<T>(fn: (c: pg.Client) => Promise<T>): Promise<T> {
  const c = new pg.Client({ connectionString: BASE_URL });
  await c.connect();
  try {
    return await fn(c);
  } finally {
    await c.end();
  }
}

/** A freshly migrated database of its own for one test file: tests never share rows. */
export async function createTestDatabase(label: string): Promise<TestDatabase> {
  const name = `spend_${label.replace(/[^a-z0-9_]/gi, "_").toLowerCase()}_${randomBytes(4).toString("hex")}`;
  const url = urlFor(name);
  await migrate({ databaseUrl: url });
  const db = createDb(url, { max: 10 });
  return {
    name,
    url,
    db,
    async drop() {
      await db.$disconnect();
      await admin((c) => c.query(`DROP DATABASE IF EXISTS "${name}" WITH (FORCE)`));
    },
  };
}

/** Deadlocks PostgreSQL has counted in a database (pg_stat_database). */
export async function deadlockCount(name: string): Promise<number> {
  return admin(async (c) => {
    const r = await c.query<{ deadlocks: string }>(
      `SELECT deadlocks::text FROM pg_stat_database WHERE datname = $1`,
      [name],
    );
    return Number(r.rows[0]?.deadlocks ?? 0);
  });
}

/** Empties every table but the migrations' own, so one database serves several tests. */
export async function truncateAll(db: Db): Promise<void> {
  await db.$executeRawUnsafe(`DO $$ DECLARE r record; BEGIN
    FOR r IN SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename <> '_prisma_migrations' LOOP
      EXECUTE format('TRUNCATE %I', r.tablename);
    END LOOP; END $$`);
}

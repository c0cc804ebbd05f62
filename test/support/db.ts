import { createHash, randomBytes } from "node:crypto";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
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

/**
 * The migrated template every test database is cloned from: named by a hash
 * of the migrations, so a changed migration makes a new one. Made once per
 * machine (test files running at once wait on an advisory lock for it).
 */
async function template(): Promise<string> {
  const dir = fileURLToPath(new URL("../../prisma/migrations/", import.meta.url));
  const hash = createHash("sha256");
  for (const m of readdirSync(dir).sort()) {
    const f = join(dir, m, "migration.sql");
    if (existsSync(f)) hash.update(m).update(readFileSync(f));
  }
  const name = `spend_template_${hash.digest("hex").slice(0, 12)}`;
  return admin(async (c) => {
    await c.query("SELECT pg_advisory_lock(7428190)");
    try {
      const found = await c.query(`SELECT 1 FROM pg_database WHERE datname = $1`, [name]);
      if (found.rowCount === 0) {
        // Templates of older migrations go, but the newest few stay: checkouts
        // on other branches (worktrees) may be cloning theirs right now.
        const old = await c.query<{ datname: string }>(
          `SELECT datname FROM pg_database WHERE datname LIKE 'spend\\_template\\_%' AND datname <> $1
           ORDER BY oid DESC OFFSET 3`,
          [name],
        );
        for (const { datname } of old.rows)
          await c.query(`DROP DATABASE IF EXISTS "${datname}" WITH (FORCE)`);
        await migrate({ databaseUrl: urlFor(name) });
      }
    } finally {
      await c.query("SELECT pg_advisory_unlock(7428190)");
    }
    return name;
  });
}

/** A freshly migrated database of its own for one test file: tests never share rows. */
export async function createTestDatabase(label: string): Promise<TestDatabase> {
  const name = `spend_${label.replace(/[^a-z0-9_]/gi, "_").toLowerCase()}_${randomBytes(4).toString("hex")}`;
  const url = urlFor(name);
  const from = await template();
  // A copy of the migrated template: far cheaper than migrating every time.
  await admin((c) => c.query(`CREATE DATABASE "${name}" TEMPLATE "${from}"`));
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

// Prisma migrations without the Prisma CLI's native schema engine.
//
// The CLI downloads a native `schema-engine` binary at start-up from a host this
// project's machines cannot reach, so `prisma migrate deploy` / `migrate diff`
// fail here. Prisma's own schema engine also ships as Wasm
// (@prisma/schema-engine-wasm) and talks to PostgreSQL through a driver adapter
// (@prisma/adapter-pg), so we drive it directly. The engine writes the same
// `_prisma_migrations` table as the native CLI: a machine that has the native
// engine can keep using `prisma migrate deploy` on the same database.
//
// This module is the public API and reads the migrations directory; the engine
// itself (loading, lifetime, errors) is in schema-engine.ts, and the driver
// adapter with its four @prisma/adapter-pg bug fixes in pg-adapter-fixes.ts, the
// default paths and MigrationError (which both use) in migration-files.ts.
//
// docs/internals.md ("Prisma without its native engines") says why and how.

import { readFile, readdir } from "node:fs/promises";
import path from "node:path";
import { performance } from "node:perf_hooks";

import type {
  MigrationDirectory,
  MigrationList,
  SchemaFilter,
} from "@prisma/schema-engine-wasm/schema_engine_bg";
import pg from "pg";

import {
  DEFAULT_MIGRATIONS_DIR,
  DEFAULT_SCHEMA_PATH,
  MigrationError,
  resolveFromRoot,
} from "./migration-files.js";
import { clientConfig, describeTarget, withSchemaEngine } from "./schema-engine.js";

export { MigrationError };

/** The same default as prisma.config.ts. */
export const DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/test";
// Where databases are created, and where the diff's engine connects.
const MAINTENANCE_DATABASE = "postgres";

// Same defaults as the CLI when prisma.config.ts declares no external tables/enums.
const NO_FILTERS: SchemaFilter = { externalTables: [], externalEnums: [] };

export interface MigrateOptions {
  databaseUrl: string;
  /** Relative paths are resolved against the repository root. */
  schemaPath?: string;
  /** Relative paths are resolved against the repository root. */
  migrationsDir?: string;
  log?: (msg: string) => void;
}

/** Applies pending migrations, like `prisma migrate deploy`. */
export async function migrate(opts: MigrateOptions): Promise<{ applied: string[] }> {
  const log = opts.log ?? noop;
  const migrationsDir = resolveFromRoot(opts.migrationsDir ?? DEFAULT_MIGRATIONS_DIR);
  const migrationsList = await listMigrations(migrationsDir);
  const found = migrationsList.migrationDirectories.length;
  log(
    found > 0
      ? `${found} migration(s) found in ${migrationsDir}`
      : `No migration found in ${migrationsDir}`,
  );
  // The engine would refuse these too, but without saying which directory.
  for (const { path: dir, migrationFile } of migrationsList.migrationDirectories) {
    if (migrationFile.content.tag === "error") {
      throw new MigrationError(
        `Cannot read ${path.join(migrationsDir, dir, migrationFile.path)}: ${migrationFile.content.value}`,
      );
    }
  }

  await ensureDatabaseExists(opts.databaseUrl, log);

  return withSchemaEngine(opts, async (engine, describe) => {
    const started = performance.now();
    const { appliedMigrationNames } = await engine
      .applyMigrations({ migrationsList, filters: NO_FILTERS })
      .catch((error: unknown) => {
        throw describe(error, "Applying migrations failed");
      });
    const ms = Math.round(performance.now() - started);
    log(
      appliedMigrationNames.length === 0
        ? `No pending migrations to apply (${ms} ms).`
        : `Applied ${appliedMigrationNames.join(", ")} (${ms} ms).`,
    );
    return { applied: appliedMigrationNames };
  });
}

/**
 * The SQL of a first migration: `prisma migrate diff --from-empty --to-schema
 * --script`. The Wasm engine queries the server version when it starts, even for
 * a diff that needs no database, so this connects to the server's `postgres`
 * maintenance database (read-only; the target database need not exist).
 */
export async function createInitialMigrationSql(
  schemaPath: string = DEFAULT_SCHEMA_PATH,
  opts: { databaseUrl?: string | undefined; log?: ((msg: string) => void) | undefined } = {},
): Promise<string> {
  const resolved = resolveFromRoot(schemaPath);
  const databaseUrl = opts.databaseUrl ?? process.env["DATABASE_URL"] ?? DEFAULT_DATABASE_URL;
  const schema = await readFile(resolved, "utf8");
  return withSchemaEngine(
    { databaseUrl, schemaPath: resolved, log: opts.log, database: MAINTENANCE_DATABASE },
    async (engine, describe) => {
      const result = await engine
        .diff({
          from: { tag: "empty" },
          to: { tag: "schemaDatamodel", files: [{ path: resolved, content: schema }] },
          script: true,
          exitCode: null,
          filters: NO_FILTERS,
        })
        .catch((error: unknown) => {
          throw describe(error, `Diffing ${resolved} against an empty database failed`);
        });
      if (result.exitCode !== 0 || result.stdout === null) {
        throw new MigrationError(`diff exited with code ${result.exitCode} and no script`);
      }
      return result.stdout;
    },
  );
}

// ---------------------------------------------------------------------------
// Migrations directory, read the way the CLI's listMigrations() does

async function listMigrations(baseDir: string): Promise<MigrationList> {
  const lockfilePath = "migration_lock.toml";
  const lockfileContent = await readFile(path.join(baseDir, lockfilePath), "utf8").catch(
    () => null,
  );
  const entries = await readdir(baseDir, { withFileTypes: true }).catch((error: unknown) => {
    if (errorCode(error) === "ENOENT") return [];
    throw error;
  });
  const migrationDirectories = await Promise.all(
    entries
      .filter((entry) => entry.isDirectory())
      .map(async (entry): Promise<MigrationDirectory> => {
        const migrationFilePath = "migration.sql";
        const content = await readFile(
          path.join(baseDir, entry.name, migrationFilePath),
          "utf8",
        ).then(
          (value) => ({ tag: "ok" as const, value }),
          (error: unknown) => ({ tag: "error" as const, value: errorMessage(error) }),
        );
        return { path: entry.name, migrationFile: { path: migrationFilePath, content } };
      }),
  );
  migrationDirectories.sort((a, b) => a.path.localeCompare(b.path));
  return {
    baseDir,
    lockfile: { path: lockfilePath, content: lockfileContent },
    migrationDirectories,
    shadowDbInitScript: "",
  };
}

// ---------------------------------------------------------------------------
// Target database (clientConfig and describeTarget are in schema-engine.ts)

/** `prisma migrate deploy` creates a missing database too; tests rely on it. */
async function ensureDatabaseExists(
  databaseUrl: string,
  log: (msg: string) => void,
): Promise<void> {
  const config = clientConfig(databaseUrl);
  const probe = new pg.Client(config);
  try {
    await probe.connect();
    return;
  } catch (error) {
    if (errorCode(error) !== PG_INVALID_CATALOG_NAME || config.database === undefined) {
      const message = `Cannot connect to ${describeTarget(config)}: ${errorMessage(error)}`;
      throw new MigrationError(message, { cause: error });
    }
  } finally {
    await probe.end().catch(noop);
  }

  const admin = new pg.Client({ ...config, database: MAINTENANCE_DATABASE });
  try {
    await admin.connect();
    await admin.query(`CREATE DATABASE ${admin.escapeIdentifier(config.database)}`);
    log(`Created database "${config.database}".`);
  } catch (error) {
    // A concurrent migrate() (parallel tests) may have created it meanwhile.
    const code = errorCode(error);
    if (code === PG_DUPLICATE_DATABASE || code === PG_UNIQUE_VIOLATION) return;
    const via = describeTarget({ ...config, database: MAINTENANCE_DATABASE });
    const message = `Cannot create database "${config.database}" via ${via}: ${errorMessage(error)}`;
    throw new MigrationError(message, { cause: error });
  } finally {
    await admin.end().catch(noop);
  }
}

const PG_INVALID_CATALOG_NAME = "3D000";
const PG_DUPLICATE_DATABASE = "42P04";
const PG_UNIQUE_VIOLATION = "23505";

// ---------------------------------------------------------------------------
// Small helpers

function noop(): void {
  // intentionally empty
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null;
}

function errorCode(error: unknown): string | undefined {
  return isRecord(error) && typeof error["code"] === "string" ? error["code"] : undefined;
}

function errorMessage(error: unknown): string {
  if (error instanceof Error) return error.message;
  return typeof error === "string" ? error : JSON.stringify(error);
}

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
// See /work/shared/notes/prisma-offline.md for the measurements behind this.

import { randomUUID } from "node:crypto";
import { readFile, readdir } from "node:fs/promises";
import { createRequire } from "node:module";
import path from "node:path";
import { performance } from "node:perf_hooks";
import { fileURLToPath } from "node:url";

import { PrismaPg } from "@prisma/adapter-pg";
import {
  bindMigrationAwareSqlAdapterFactory,
  DriverAdapterError,
  type ErrorRegistry,
  type SqlDriverAdapter,
  type SqlMigrationAwareDriverAdapterFactory,
} from "@prisma/driver-adapter-utils";
import type {
  MigrationDirectory,
  MigrationList,
  SchemaEngine,
  SchemaFilter,
} from "@prisma/schema-engine-wasm/schema_engine_bg";
import pg from "pg";
import { parseIntoClientConfig } from "pg-connection-string";

const REPO_ROOT = fileURLToPath(new URL("../../", import.meta.url));
export const DEFAULT_SCHEMA_PATH = path.join(REPO_ROOT, "prisma", "schema.prisma");
export const DEFAULT_MIGRATIONS_DIR = path.join(REPO_ROOT, "prisma", "migrations");
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

export class MigrationError extends Error {
  override readonly name = "MigrationError";
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

type Describe = (error: unknown, context: string) => MigrationError;

/**
 * Runs `fn` with a schema engine connected to `databaseUrl`, then frees the engine
 * and closes every connection it opened. Exported for future `migrate dev` /
 * `db push` style commands; the adapter fixes below cover their code paths too.
 */
export async function withSchemaEngine<T>(
  opts: {
    databaseUrl: string;
    schemaPath?: string | undefined;
    log?: ((msg: string) => void) | undefined;
    /** Overrides the database named in the URL. */
    database?: string | undefined;
  },
  fn: (engine: SchemaEngine, describe: Describe) => Promise<T>,
): Promise<T> {
  const log = opts.log ?? noop;
  const schemaPath = resolveFromRoot(opts.schemaPath ?? DEFAULT_SCHEMA_PATH);
  const [Engine, schema] = await Promise.all([loadSchemaEngine(log), readFile(schemaPath, "utf8")]);

  const config = clientConfig(opts.databaseUrl, opts.database);
  const factory = new MigrationAdapterFactory(config);
  const bound = bindMigrationAwareSqlAdapterFactory(factory);
  const describe: Describe = (error, context) =>
    describeEngineError(error, context, bound.errorRegistry, factory.lastScriptError);

  // Engine timers are unref'd (see withUnrefTimers): keep the process alive
  // ourselves while the engine may still be waiting on one.
  const keepAlive = setInterval(noop, 60_000);
  let engine: SchemaEngine | undefined;
  try {
    engine = await Engine.new(
      { datamodels: [[schemaPath, schema]] },
      engineLogger(log),
      bound,
    ).catch((error: unknown) => {
      throw describe(error, `Starting the schema engine on ${describeTarget(config)} failed`);
    });
    return await fn(engine, describe);
  } finally {
    engine?.free();
    // free() does not dispose the adapter it was given: its pg pool would keep an
    // idle connection (and the process) alive until pg's 10 s idle timeout.
    await factory.disposeAll();
    clearInterval(keepAlive);
  }
}

// ---------------------------------------------------------------------------
// Loading the Wasm engine

// The project compiles against lib ES2023 without DOM, and @types/node does not
// declare the WebAssembly global: describe the little of it used here.
declare const WebAssembly: {
  instantiate(
    bytes: Uint8Array,
    imports: Record<string, Record<string, unknown>>,
  ): Promise<{ instance: { exports: Record<string, unknown> } }>;
};

let engineClass: Promise<typeof SchemaEngine> | undefined;

/**
 * The wasm-bindgen glue keeps the instance in module state, so the module is
 * instantiated once per process and every engine shares it. The package's own
 * entry point imports the `.wasm` file as an ES module, which Node does not
 * support without a flag; instantiating it by hand is what its glue expects.
 */
function loadSchemaEngine(log: (msg: string) => void): Promise<typeof SchemaEngine> {
  engineClass ??= (async () => {
    const started = performance.now();
    const require = createRequire(import.meta.url);
    const gluePath = require.resolve("@prisma/schema-engine-wasm/schema_engine_bg");
    const glue = await import("@prisma/schema-engine-wasm/schema_engine_bg");
    const bytes = await readFile(path.join(path.dirname(gluePath), "schema_engine_bg.wasm"));
    const { instance } = await WebAssembly.instantiate(bytes, {
      "./schema_engine_bg.js": withUnrefTimers(glue),
    });
    glue.__wbg_set_wasm(instance.exports);
    const start = instance.exports["__wbindgen_start"];
    if (!isCallable(start)) {
      throw new MigrationError(
        "@prisma/schema-engine-wasm: the module exports no __wbindgen_start",
      );
    }
    start();
    log(`Schema engine ${glue.version()} loaded in ${Math.round(performance.now() - started)} ms.`);
    return glue.SchemaEngine;
  })().catch((error: unknown) => {
    engineClass = undefined;
    throw error;
  });
  return engineClass;
}

/**
 * The engine arms a timer for each timeout it races against I/O (e.g. 10 s for
 * `pg_advisory_lock` in applyMigrations) and the glue has no clearTimeout, so the
 * timer outlives the operation and would hold the process for 10 s after every
 * deploy. Unref'd, it never keeps the process alive; withSchemaEngine() holds the
 * process open itself while an engine is in use. The glue's import names carry a
 * build hash, hence the prefix match.
 */
function withUnrefTimers(glue: Record<string, unknown>): Record<string, unknown> {
  const imports: Record<string, unknown> = { ...glue };
  for (const [name, value] of Object.entries(glue)) {
    if (!name.startsWith("__wbg_setTimeout_") || !isCallable(value)) continue;
    imports[name] = (...args: unknown[]): unknown => {
      const timer: unknown = value(...args);
      if (isRecord(timer) && isCallable(timer["unref"])) timer["unref"]();
      return timer;
    };
  }
  return imports;
}

function engineLogger(log: (msg: string) => void): (line: string) => void {
  return (line) => {
    const event = parseJson(line);
    if (!isRecord(event) || (event["level"] !== "WARN" && event["level"] !== "ERROR")) return;
    const fields = event["fields"];
    const message =
      isRecord(fields) && typeof fields["message"] === "string" ? fields["message"] : line;
    log(`schema engine ${event["level"].toLowerCase()}: ${message}`);
  };
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
// Target database

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

/**
 * Separate fields rather than `connectionString`: pg lets `connectionString` win
 * over `database`, which is how adapter-pg's shadow database ends up being the main
 * one (bug 1 in the notes).
 */
function clientConfig(databaseUrl: string, database?: string): pg.ClientConfig {
  // Prisma reads `?schema=` as the target schema (and sets search_path); pg
  // ignores it, so honouring it would need more than this module does. Refuse
  // rather than silently migrate `public`.
  const schema = new URL(databaseUrl).searchParams.get("schema");
  if (schema !== null && schema !== "public") {
    throw new MigrationError(
      `DATABASE_URL asks for schema "${schema}": only "public" is supported`,
    );
  }
  const config = parseIntoClientConfig(databaseUrl);
  return database === undefined ? config : { ...config, database };
}

function describeTarget(config: pg.ClientConfig): string {
  return `database "${config.database ?? "(default)"}" on ${config.host ?? "localhost"}:${config.port ?? 5432}`;
}

// ---------------------------------------------------------------------------
// Driver adapter with the adapter-pg 7.10 bugs worked around (see the notes)

class MigrationAdapterFactory implements SqlMigrationAwareDriverAdapterFactory {
  readonly provider = "postgres";
  readonly adapterName = "@prisma/adapter-pg";
  readonly #config: pg.ClientConfig;
  readonly #open = new Set<SqlDriverAdapter>();
  #lastScriptError: string | undefined;

  constructor(config: pg.ClientConfig) {
    this.#config = config;
  }

  /** PostgreSQL's own account of the last failed script, for error messages. */
  get lastScriptError(): string | undefined {
    return this.#lastScriptError;
  }

  async connect(): Promise<SqlDriverAdapter> {
    const { adapter, pool } = await connectPg(this.#config);
    return this.#track(adapter, pool, () => adapter.dispose());
  }

  async connectToShadowDb(): Promise<SqlDriverAdapter> {
    const database = `prisma_migrate_shadow_db_${randomUUID()}`;
    await withClient(this.#config, (c) =>
      c.query(`CREATE DATABASE ${c.escapeIdentifier(database)}`),
    );
    const { adapter, pool } = await connectPg({ ...this.#config, database });
    // Bug 3: close the shadow pool before dropping its database, or the drop fails
    // with "being accessed by other users" and the database is left behind.
    return this.#track(adapter, pool, async () => {
      await adapter.dispose();
      await withClient(this.#config, (c) =>
        c.query(`DROP DATABASE IF EXISTS ${c.escapeIdentifier(database)}`),
      );
    });
  }

  async disposeAll(): Promise<void> {
    await Promise.allSettled([...this.#open].map((adapter) => adapter.dispose()));
  }

  #track(inner: SqlDriverAdapter, pool: pg.Pool, release: () => Promise<void>): SqlDriverAdapter {
    let released: Promise<void> | undefined;
    const adapter: SqlDriverAdapter = {
      provider: inner.provider,
      adapterName: inner.adapterName,
      queryRaw: (query) => inner.queryRaw(query),
      executeRaw: (query) => inner.executeRaw(query),
      startTransaction: (isolationLevel) => inner.startTransaction(isolationLevel),
      getConnectionInfo: () => inner.getConnectionInfo?.() ?? { supportsRelationJoins: true },
      // Bug 4: adapter-pg splits scripts on every `;` (breaking string literals,
      // comments and `$$` bodies) and runs the pieces separately, so a failure
      // leaves a migration half-applied. A query without parameters goes over
      // pg's simple protocol as one message: PostgreSQL runs it as one implicit
      // transaction, like the native engine does, and rolls it all back on error.
      executeScript: async (script) => {
        this.#lastScriptError = undefined;
        await pool.query(script).catch((error: unknown) => {
          this.#lastScriptError = describePgError(error, script);
          throw toDriverAdapterError(error);
        });
      },
      // The engine disposes some adapters itself (the shadow one) and we dispose
      // whatever is left after free(): make it idempotent.
      dispose: () => {
        released ??= release().finally(() => this.#open.delete(adapter));
        return released;
      },
    };
    this.#open.add(adapter);
    return adapter;
  }
}

async function connectPg(
  config: pg.ClientConfig,
): Promise<{ adapter: SqlDriverAdapter; pool: pg.Pool }> {
  const pool = new pg.Pool({ ...config, Client: CharAsTextClient });
  return { adapter: await new PrismaPg(pool, { disposeExternalPool: true }).connect(), pool };
}

/**
 * The same mapping adapter-pg applies to query errors, so the engine sees a
 * PostgreSQL error rather than an opaque JS one. (The engine then reduces some
 * SQLSTATEs to its own wording, e.g. 42P01 to "No such table: x", which is why
 * describePgError() keeps the server's message on the side.) Anything that is
 * not a server error, such as a dropped connection, reaches the engine as is and
 * describeEngineError() recovers it from the error registry.
 */
function toDriverAdapterError(error: unknown): unknown {
  const fields = pgErrorFields(error);
  if (fields === undefined) return error;
  return new DriverAdapterError({
    kind: "postgres",
    code: fields.code,
    severity: fields.severity,
    message: fields.message,
    detail: fields.detail,
    column: fields.column,
    hint: fields.hint,
  });
}

function describePgError(error: unknown, script: string): string {
  const fields = pgErrorFields(error);
  if (fields === undefined) return errorMessage(error);
  const position = Number(fields.position);
  const line =
    Number.isInteger(position) && position > 0
      ? script.slice(0, position - 1).split("\n").length
      : undefined;
  return [
    `${fields.severity} ${fields.code}: ${fields.message}${line === undefined ? "" : ` (line ${line} of the script)`}`,
    fields.detail === undefined ? undefined : `DETAIL: ${fields.detail}`,
    fields.hint === undefined ? undefined : `HINT: ${fields.hint}`,
    fields.where === undefined ? undefined : `WHERE: ${fields.where}`,
  ]
    .filter((part) => part !== undefined)
    .join("\n");
}

interface PgErrorFields {
  code: string;
  severity: string;
  message: string;
  detail?: string | undefined;
  hint?: string | undefined;
  column?: string | undefined;
  position?: string | undefined;
  where?: string | undefined;
}

function pgErrorFields(error: unknown): PgErrorFields | undefined {
  if (!(error instanceof Error) || !isRecord(error)) return undefined;
  const text = (key: string): string | undefined => {
    const value = error[key];
    return typeof value === "string" ? value : undefined;
  };
  const code = text("code");
  const severity = text("severity");
  if (code === undefined || severity === undefined) return undefined;
  return {
    code,
    severity,
    message: error.message,
    detail: text("detail"),
    hint: text("hint"),
    column: text("column"),
    position: text("position"),
    where: text("where"),
  };
}

async function withClient<T>(
  config: pg.ClientConfig,
  fn: (client: pg.Client) => Promise<T>,
): Promise<T> {
  const client = new pg.Client(config);
  try {
    await client.connect();
    return await fn(client);
  } finally {
    await client.end().catch(noop);
  }
}

const PG_CHAR_OID = 18;
const PG_NAME_OID = 19;
const PG_TEXT_OID = 25;

/**
 * Bug 2: adapter-pg cannot map pg's `"char"` (OID 18) and `name` (OID 19), which
 * the engine reads from the catalogs whenever it inspects a live schema (`db
 * push`, `migrate dev`): "Column type 'char' could not be deserialized". Their
 * values already arrive as strings, so reporting them as text is enough. Done on
 * the pg client because adapter-pg maps the types before we could see the result.
 */
class CharAsTextClient extends pg.Client {
  constructor(config?: string | pg.ClientConfig) {
    super(config);
    // pg's query() has a dozen overloads; wrapping it per instance avoids
    // restating them all in an override.
    const original: unknown = Reflect.get(this, "query");
    if (!isCallable(original)) return;
    const query = (...args: unknown[]): unknown => {
      const callback = args.at(-1);
      if (isCallable(callback)) {
        args[args.length - 1] = (error: unknown, result: unknown): unknown => {
          reportCharAsText(result);
          return callback(error, result);
        };
      }
      const returned: unknown = Reflect.apply(original, this, args);
      if (isCallable(callback) || !(returned instanceof Promise)) return returned;
      return returned.then((result: unknown) => {
        reportCharAsText(result);
        return result;
      });
    };
    Object.defineProperty(this, "query", { value: query, writable: true, configurable: true });
  }
}

function reportCharAsText(result: unknown): void {
  for (const one of Array.isArray(result) ? result : [result]) {
    if (!isRecord(one) || !Array.isArray(one["fields"])) continue;
    for (const field of one["fields"]) {
      if (
        isRecord(field) &&
        (field["dataTypeID"] === PG_CHAR_OID || field["dataTypeID"] === PG_NAME_OID)
      ) {
        field["dataTypeID"] = PG_TEXT_OID;
      }
    }
  }
}

// ---------------------------------------------------------------------------
// Errors

/**
 * Engine errors arrive as plain Errors whose message is the CLI's user-facing
 * text followed by a Rust span trace. For a failed migration the trace is the
 * only place that names it, and the engine's wording of the database error may
 * be reduced (see toDriverAdapterError), so both are restated up front. When the
 * failure came from JS code outside the PostgreSQL error mapping, the message is
 * only "External error id#N": the real error sits in the adapter's registry.
 */
function describeEngineError(
  error: unknown,
  context: string,
  registry: ErrorRegistry,
  lastScriptError: string | undefined,
): MigrationError {
  const full = errorMessage(error);
  const traceStart = full.search(/^\s+0: /m);
  let engineMessage = (traceStart === -1 ? full : full.slice(0, traceStart)).trim();
  const external = /External error id#(\d+)/.exec(engineMessage);
  if (external?.[1] !== undefined) {
    const record = registry.consumeError(Number(external[1]));
    if (record !== undefined) engineMessage = `${engineMessage} (${errorMessage(record.error)})`;
  }
  const migrationName = /migration_name="([^"]+)"/.exec(full)?.[1];
  const lines =
    migrationName === undefined
      ? [`${context}.`]
      : [
          `${context}: migration "${migrationName}" failed.`,
          ...(lastScriptError === undefined ? [] : [`PostgreSQL: ${lastScriptError}`]),
        ];
  lines.push(`Schema engine: ${engineMessage}`);
  return new MigrationError(lines.join("\n"), { cause: error });
}

// ---------------------------------------------------------------------------
// Small helpers

function resolveFromRoot(p: string): string {
  return path.resolve(REPO_ROOT, p);
}

function noop(): void {
  // intentionally empty
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null;
}

function isCallable(value: unknown): value is (...args: unknown[]) => unknown {
  return typeof value === "function";
}

function parseJson(text: string): unknown {
  try {
    return JSON.parse(text) as unknown;
  } catch {
    return undefined;
  }
}

function errorCode(error: unknown): string | undefined {
  return isRecord(error) && typeof error["code"] === "string" ? error["code"] : undefined;
}

function errorMessage(error: unknown): string {
  if (error instanceof Error) return error.message;
  return typeof error === "string" ? error : JSON.stringify(error);
}

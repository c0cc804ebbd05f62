// Prisma's schema engine as Wasm (@prisma/schema-engine-wasm), loaded by hand and
// connected to PostgreSQL through the fixed adapter of pg-adapter-fixes.ts. This
// module owns the engine's lifetime: its timers, its connections and freeing it.
//
// docs/internals.md ("Prisma without its native engines") says why and how.

import { readFile } from "node:fs/promises";
import { createRequire } from "node:module";
import path from "node:path";
import { performance } from "node:perf_hooks";

import {
  bindMigrationAwareSqlAdapterFactory,
  type ErrorRegistry,
} from "@prisma/driver-adapter-utils";
import type { SchemaEngine } from "@prisma/schema-engine-wasm/schema_engine_bg";
import type pg from "pg";

import { DEFAULT_SCHEMA_PATH, MigrationError, resolveFromRoot } from "./migration-files.js";
import { MigrationAdapterFactory, pgClientConfig } from "./pg-adapter-fixes.js";

export type Describe = (error: unknown, context: string) => MigrationError;

/**
 * Runs `fn` with a schema engine connected to `databaseUrl`, then frees the engine
 * and closes every connection it opened. Exported for future `migrate dev` /
 * `db push` style commands; the adapter fixes in pg-adapter-fixes.ts cover their
 * code paths too.
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
// Target database

/** The pg config for `databaseUrl`, optionally aimed at another database. */
export function clientConfig(databaseUrl: string, database?: string): pg.ClientConfig {
  // Prisma reads `?schema=` as the target schema (and sets search_path); pg
  // ignores it, so honouring it would need more than this module does. Refuse
  // rather than silently migrate `public`.
  const schema = new URL(databaseUrl).searchParams.get("schema");
  if (schema !== null && schema !== "public") {
    throw new MigrationError(
      `DATABASE_URL asks for schema "${schema}": only "public" is supported`,
    );
  }
  return pgClientConfig(databaseUrl, database);
}

export function describeTarget(config: pg.ClientConfig): string {
  return `database "${config.database ?? "(default)"}" on ${config.host ?? "localhost"}:${config.port ?? 5432}`;
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
// Errors

/**
 * Engine errors arrive as plain Errors whose message is the CLI's user-facing
 * text followed by a Rust span trace. For a failed migration the trace is the
 * only place that names it, and the engine's wording of the database error may
 * be reduced (see toDriverAdapterError in pg-adapter-fixes.ts), so both are
 * restated up front. When the failure came from JS code outside the PostgreSQL
 * error mapping, the message is only "External error id#N": the real error sits
 * in the adapter's registry.
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

function errorMessage(error: unknown): string {
  if (error instanceof Error) return error.message;
  return typeof error === "string" ? error : JSON.stringify(error);
}

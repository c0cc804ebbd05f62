// The driver adapter the schema engine talks to PostgreSQL through: @prisma/adapter-pg,
// wrapped to work around four bugs in its 7.10 release that the engine hits (all
// reproduced; see docs/internals.md, "Prisma without its native engines"). Each fix below is marked
// with the number of the bug it works around:
//   1. the shadow database is aimed at the main one (pgClientConfig);
//   2. pg's `"char"` columns cannot be deserialized (CharAsTextClient);
//   3. the shadow database is dropped before its pool is closed (connectToShadowDb);
//   4. executeScript splits a migration on every `;` (executeScript in #track).
// Bug 4 affects a plain `migrate deploy`; bugs 1–3 affect `migrate dev` and `db push`.

import { randomUUID } from "node:crypto";

import { PrismaPg } from "@prisma/adapter-pg";
import {
  DriverAdapterError,
  type SqlDriverAdapter,
  type SqlMigrationAwareDriverAdapterFactory,
} from "@prisma/driver-adapter-utils";
import pg from "pg";
import { parseIntoClientConfig } from "pg-connection-string";

/**
 * Bug 1: separate fields rather than `connectionString`. adapter-pg builds the
 * shadow pool as `{ ...config, database: shadowName }`, but pg lets
 * `connectionString` win over `database`, so `migrate dev`'s shadow replay would
 * run on the main database. Every config given to MigrationAdapterFactory must
 * come from here.
 */
export function pgClientConfig(databaseUrl: string, database?: string): pg.ClientConfig {
  const config = parseIntoClientConfig(databaseUrl);
  return database === undefined ? config : { ...config, database };
}

export class MigrationAdapterFactory implements SqlMigrationAwareDriverAdapterFactory {
  readonly provider = "postgres";
  readonly adapterName = "@prisma/adapter-pg";
  readonly #config: pg.ClientConfig;
  readonly #open = new Set<SqlDriverAdapter>();
  #lastScriptError: string | undefined;

  /** `config` comes from pgClientConfig() (bug 1). */
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
    // Bug 1: this override only takes effect because the config has no
    // connectionString (see pgClientConfig).
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
  // Bug 2: every connection the engine uses goes through CharAsTextClient.
  const pool = new pg.Pool({ ...config, Client: CharAsTextClient });
  return { adapter: await new PrismaPg(pool, { disposeExternalPool: true }).connect(), pool };
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

// ---------------------------------------------------------------------------
// Bug 2: `"char"` and `name` columns

const PG_CHAR_OID = 18;
const PG_NAME_OID = 19;
const PG_TEXT_OID = 25;

/**
 * Bug 2: adapter-pg cannot map pg's `"char"` (OID 18), which the engine reads
 * from the catalogs whenever it inspects a live schema (`db push`, `migrate
 * dev`): "Column type 'char' could not be deserialized". `name` (OID 19) is
 * reported the same way: the adapter maps it today, earlier versions did not,
 * and as text it is the same value. Values of both already arrive as strings,
 * so reporting them as text is enough. Done on the pg client because
 * adapter-pg maps the types before we could see the result.
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
// Bug 4: errors from a script sent in one piece

/**
 * The same mapping adapter-pg applies to query errors, so the engine sees a
 * PostgreSQL error rather than an opaque JS one. (The engine then reduces some
 * SQLSTATEs to its own wording, e.g. 42P01 to "No such table: x", which is why
 * describePgError() keeps the server's message on the side.) Anything that is
 * not a server error, such as a dropped connection, reaches the engine as is and
 * describeEngineError() (schema-engine.ts) recovers it from the error registry.
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

function errorMessage(error: unknown): string {
  if (error instanceof Error) return error.message;
  return typeof error === "string" ? error : JSON.stringify(error);
}

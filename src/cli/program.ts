import { existsSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { Command, InvalidArgumentError, Option } from "commander";
import {
  ConfigError,
  loadConfig,
  redact,
  reportIgnoredKeys,
  type AppConfig,
} from "../config/config.js";
import { KeyInputError } from "../gateway/virtual-keys.js";
import { errorText } from "../observe/error-text.js";
import { createLogger } from "../observe/logger.js";
import { StartupError } from "../config/startup-error.js";

async function preflight(
  ...args: Parameters<typeof import("./preflight.js").preflight>
): Promise<void> {
  const m = await import("./preflight.js");
  await m.preflight(...args);
}

// The heavy modules (Prisma, BullMQ, express, Bull Board) are imported by the
// subcommand that needs them: --help and a bad configuration answer at once.

/** Exit codes: 0 fine, 1 failed while running, 2 bad configuration or unreachable dependency. */
export const EXIT_BAD_CONFIG = 2;

interface ConfigOption {
  config?: string;
}

const configOption = (): Option =>
  new Option(
    "-c, --config <path>",
    "proxy_config.yaml to read (default: $SPEND_CONFIG, else none)",
  );

/**
 * Reads the configuration. What it set aside (LiteLLM settings not used here)
 * is said once: on stderr by a one-shot command, in the log by `gateway` and
 * `worker` (`logged`), whose logger needs the configuration first.
 */
function readConfig(opts: ConfigOption, { logged = false } = {}): AppConfig {
  const path = opts.config ?? (process.env.SPEND_CONFIG || undefined);
  const config = loadConfig(path);
  if (!logged)
    reportIgnoredKeys(config.ignoredLiteLLMKeys, (w) => process.stderr.write(`warning: ${w}\n`));
  return config;
}

function portOption(v: string): number {
  // Digits only: Number() would also take "", "0x10" and "1e3".
  const n = Number(v);
  if (!/^\d{1,5}$/.test(v) || n > 65_535)
    throw new InvalidArgumentError("Expected a port number from 0 to 65535.");
  return n;
}

/** Errors whose class the CLI must not import eagerly (BullMQ behind them), known by their code. */
const BAD_CONFIG_CODES = new Set(["PARTITION_MISMATCH"]);

function isBadConfig(err: unknown): boolean {
  if (err instanceof ConfigError || err instanceof StartupError || err instanceof KeyInputError)
    return true;
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === "string" && BAD_CONFIG_CODES.has(code);
}

/** One line, credentials hidden: what goes after `error: `. */
function oneLine(err: unknown): string {
  return redact(errorText(err));
}

/**
 * Runs an action; a bad configuration, an unreachable dependency or a refused
 * start (a port in use, a flush partition mismatch) exits 2 with one line.
 */
function action<A extends unknown[]>(
  fn: (...args: A) => Promise<void>,
): (...args: A) => Promise<void> {
  return async (...args: A) => {
    try {
      await fn(...args);
    } catch (err) {
      process.stderr.write(`error: ${oneLine(err)}\n`);
      process.exit(isBadConfig(err) ? EXIT_BAD_CONFIG : 1);
    }
  };
}

/** Stops `close` on SIGTERM/SIGINT, then exits: 0 when it drained, 1 when it could not. */
function onSignals(log: ReturnType<typeof createLogger>, close: () => Promise<void>): void {
  let stopping = false;
  const stop = (signal: string): void => {
    if (stopping) return;
    stopping = true;
    log.info({ signal }, "stopping: draining");
    close().then(
      () => {
        log.info("stopped");
        process.exit(0);
      },
      (err: unknown) => {
        log.error({ err: (err as Error).message }, "stopped without draining everything");
        process.exit(1);
      },
    );
  };
  process.on("SIGTERM", () => stop("SIGTERM"));
  process.on("SIGINT", () => stop("SIGINT"));
  // Started by a parent over IPC (the demo): if the parent dies, stop rather
  // than run on under its prefix unwatched. A process started otherwise has no channel.
  if (process.connected) process.on("disconnect", () => stop("parent exited"));
}

/**
 * The package's version: the first package.json above this module (two
 * levels up from dist/cli or src/cli; three from the tests' transpiled copy
 * in .build/, which has none of its own).
 */
function packageVersion(): string {
  for (let dir = dirname(fileURLToPath(import.meta.url)); ;) {
    const file = join(dir, "package.json");
    if (existsSync(file))
      return (JSON.parse(readFileSync(file, "utf8")) as { version: string }).version;
    const up = dirname(dir);
    if (up === dir) return "unknown";
    dir = up;
  }
}

/** The whole CLI, without side effects until parsed: tests and docker-compose.yml check it. */
export function buildProgram(): Command {
  const program = new Command("haimaker-spend")
    .description(
      "Exact spend accounting for LLM gateways: gateway, flush worker, migrations, keys and status.",
    )
    .version(packageVersion(), "-V, --version", "print the package's version")
    .configureHelp({ sortSubcommands: false })
    // A usage error is one line on stderr and exit 2, like a bad configuration (commander
    // would exit 1, and print the help after it); --help and --version still exit 0.
    // Subcommands inherit both settings from here.
    .configureOutput({
      outputError: (str, write) => {
        write(`${str.replace(/\s*\n\s*/g, " ").trim()} (see --help)\n`);
      },
    })
    .exitOverride((err) => {
      process.exit(err.exitCode === 0 ? 0 : EXIT_BAD_CONFIG);
    });

  program
    .command("gateway")
    .description(
      "Start a gateway: OpenAI-compatible /v1/chat/completions (mock model), POST /spend/events, POST /key/generate, /health/*, /metrics",
    )
    .addOption(configOption())
    .option(
      "-p, --port <port>",
      "HTTP port (default: spend_buffer_settings.gateway_port, 4000)",
      portOption,
    )
    .option("--host <host>", "address to listen on", "0.0.0.0")
    .action(
      action(async (opts: ConfigOption & { port?: number; host: string }) => {
        const config = readConfig(opts, { logged: true });
        await preflight(config, {
          redis: config.useRedisBuffer,
          postgres: true,
          schema: true,
          partitions: config.useRedisBuffer ? "gateway" : undefined,
        });
        const log = createLogger("gateway", config.logLevel);
        reportIgnoredKeys(config.ignoredLiteLLMKeys, (w) => log.warn(w));
        if (config.gateway.modelPrices.size === 0)
          log.warn(
            "no model prices configured (spend_buffer_settings.model_prices): every chat request will be refused",
          );
        if (config.masterKey === undefined)
          log.warn(
            "general_settings.master_key is not set: /spend/events and /key/generate are off",
          );
        const { startGateway } = await import("../gateway/gateway.js");
        const gw = await startGateway(config, {
          logger: log,
          host: opts.host,
          ...(opts.port !== undefined ? { port: opts.port } : {}),
        });
        log.info(
          {
            port: gw.port,
            buffer: config.useRedisBuffer ? "redis" : "direct",
            prefix: config.keyPrefix,
            database: redact(config.databaseUrl),
          },
          "gateway listening",
        );
        onSignals(log, () => gw.close());
      }),
    );

  program
    .command("worker")
    .description(
      "Start a flush worker: drains Redis into PostgreSQL; serves /metrics, /health/* and Bull Board at /admin/queues",
    )
    .addOption(configOption())
    .option(
      "-p, --port <port>",
      "HTTP port (default: $METRICS_PORT, else spend_buffer_settings.metrics_port)",
      portOption,
    )
    .action(
      action(async (opts: ConfigOption & { port?: number }) => {
        const config = readConfig(opts, { logged: true });
        if (!config.useRedisBuffer)
          throw new StartupError(
            "general_settings.use_redis_transaction_buffer is false: gateways write to PostgreSQL directly and no flush worker is needed",
          );
        await preflight(config, { redis: true, postgres: true, schema: true });
        const log = createLogger("flush-worker", config.logLevel);
        reportIgnoredKeys(config.ignoredLiteLLMKeys, (w) => log.warn(w));
        if (
          config.admin.auth &&
          config.admin.username === undefined &&
          config.admin.token === undefined &&
          config.masterKey === undefined
        )
          log.warn("Bull Board is locked: no admin credentials configured");
        const { startFlushWorker } = await import("../wiring/start-flush-worker.js");
        const svc = await startFlushWorker(config, {
          logger: log,
          ...(opts.port !== undefined ? { port: opts.port } : {}),
        });
        log.info(
          { port: svc.port, prefix: config.keyPrefix, everyMs: config.worker.flushEveryMs },
          "flush worker running",
        );
        onSignals(log, () => svc.close());
      }),
    );

  program
    .command("migrate")
    .description("Apply pending database migrations (creates the database if it does not exist)")
    .addOption(configOption())
    .action(
      action(async (opts: ConfigOption) => {
        const config = readConfig(opts);
        await preflight(config, { postgres: true, allowMissingDatabase: true });
        const { migrate } = await import("../persist/migrate.js");
        const { applied } = await migrate({
          databaseUrl: config.databaseUrl,
          log: (m) => process.stderr.write(`${redact(m)}\n`),
        });
        process.stdout.write(
          applied.length === 0
            ? "No pending migrations to apply.\n"
            : `Applied ${applied.length} migration(s): ${applied.join(", ")}\n`,
        );
        process.exit(0);
      }),
    );

  const key = program.command("key").description("Manage virtual keys");
  key
    .command("create")
    .description(
      "Create a virtual key for a user, team and/or organization; prints the key once (only its SHA-256 is stored)",
    )
    .addOption(configOption())
    .option("--user <id>", "user id (LiteLLM_UserTable, created if new)")
    .option("--team <id>", "team id (LiteLLM_TeamTable, created if new)")
    .option("--org <id>", "organization id (LiteLLM_OrganizationTable, created if new)")
    .option("--alias <alias>", "key alias")
    .option("--models <names>", "comma-separated models the key may call (default: every model)")
    .option("--duration <d>", 'how long the key works: "30s", "1h", "30d", "1mo" (default: no end)')
    .action(
      action(
        async (
          opts: ConfigOption & {
            user?: string;
            team?: string;
            org?: string;
            alias?: string;
            models?: string;
            duration?: string;
          },
        ) => {
          const config = readConfig(opts);
          if (opts.user === undefined && opts.team === undefined && opts.org === undefined)
            throw new KeyInputError("give at least one of --user, --team, --org");
          const { keyChanges } = await import("../gateway/key-admin.js");
          const changes = keyChanges(
            {
              ...(opts.models !== undefined
                ? { models: opts.models.split(",").map((m) => m.trim()) }
                : {}),
              ...(opts.duration !== undefined ? { duration: opts.duration } : {}),
            },
            { metadataMaxBytes: config.gateway.keyMetadataMaxBytes, now: Date.now() },
          );
          await preflight(config, { postgres: true, schema: true });
          const { createDb } = await import("../persist/prisma.js");
          const { createKey, keyResponse } = await import("../gateway/virtual-keys.js");
          const db = createDb(config.databaseUrl, { max: 1 });
          try {
            const k = await createKey(db, {
              ...(opts.user !== undefined ? { userId: opts.user } : {}),
              ...(opts.team !== undefined ? { teamId: opts.team } : {}),
              ...(opts.org !== undefined ? { organizationId: opts.org } : {}),
              ...(opts.alias !== undefined ? { keyAlias: opts.alias } : {}),
              ...(changes.models !== undefined ? { models: changes.models } : {}),
              ...(changes.expires != null ? { expires: changes.expires } : {}),
            });
            process.stdout.write(`${JSON.stringify(keyResponse(k), null, 2)}\n`);
          } finally {
            await db.$disconnect();
          }
          process.exit(0);
        },
      ),
    );

  program
    .command("status")
    .description(
      "Show queue depths by state, the flush lock holder and its lease, the last successful flush and the backlog's age (with PostgreSQL down, Redis's side and why, exit 1)",
    )
    .addOption(configOption())
    .option("--json", "print JSON instead of text")
    .action(
      action(async (opts: ConfigOption & { json?: boolean }) => {
        const config = readConfig(opts);
        // Redis only: during a PostgreSQL outage the backlog is what matters most.
        await preflight(config, { redis: true });
        const { collectStatus, formatStatus } = await import("./status.js");
        const s = await collectStatus(config);
        process.stdout.write(
          opts.json === true ? `${JSON.stringify(s, null, 2)}\n` : formatStatus(s),
        );
        // Shown, but not healthy: a script checking the exit code learns PostgreSQL was not read.
        process.exit(s.postgresUnavailable === undefined ? 0 : 1);
      }),
    );

  const dead = program
    .command("dead-letter")
    .description(
      "Spend the flush set aside (rows PostgreSQL refused, jobs it could not read): list it, replay it once fixed",
    );
  dead
    .command("list")
    .description("List dead letters not yet replayed (with --all, replayed ones too)")
    .addOption(configOption())
    .option("--all", "include dead letters already replayed")
    .option("--json", "print JSON instead of text")
    .action(
      action(async (opts: ConfigOption & { all?: boolean; json?: boolean }) => {
        const config = readConfig(opts);
        await preflight(config, { postgres: true, schema: true });
        const { createDb } = await import("../persist/prisma.js");
        const { listDeadLetters } = await import("../persist/dead-letters.js");
        const db = createDb(config.databaseUrl, { max: 1 });
        try {
          const letters = await listDeadLetters(db, { all: opts.all === true });
          if (opts.json === true)
            process.stdout.write(
              `${JSON.stringify(
                letters.map((l) => ({ ...l, id: l.id.toString() })),
                null,
                2,
              )}\n`,
            );
          else if (letters.length === 0) process.stdout.write("No dead letters.\n");
          else
            for (const l of letters)
              process.stdout.write(
                `#${l.id} ${l.createdAt.toISOString()} ${l.kind} batch ${l.batchId}: ${l.rows} row(s), ${l.reason}${l.sqlState !== null ? ` ${l.sqlState}` : ""}${l.replayedAt !== null ? `, replayed ${l.replayedAt.toISOString()}` : ""}\n    ${l.detail}\n`,
              );
        } finally {
          await db.$disconnect();
        }
        process.exit(0);
      }),
    );
  dead
    .command("replay")
    .description(
      "Apply dead letters once (their rows read with today's rules); rows still refused stay, with the new reason",
    )
    .addOption(configOption())
    .option("--id <id...>", "dead letter ids (from `dead-letter list`)")
    .option("--all", "every dead letter not yet replayed")
    .action(
      action(async (opts: ConfigOption & { id?: string[]; all?: boolean }) => {
        const config = readConfig(opts);
        if ((opts.id === undefined) === (opts.all !== true))
          throw new StartupError("give either --id <id...> or --all");
        const ids = (opts.id ?? []).map((v) => {
          if (!/^\d{1,19}$/.test(v)) throw new StartupError(`not a dead letter id: ${v}`);
          return BigInt(v);
        });
        await preflight(config, { postgres: true, schema: true });
        const { createDb } = await import("../persist/prisma.js");
        const { listDeadLetters, replayDeadLetter } = await import("../persist/dead-letters.js");
        const db = createDb(config.databaseUrl, { max: 1 });
        let left = 0;
        let unknown = 0;
        try {
          const todo =
            opts.all === true
              ? (await listDeadLetters(db, { limit: 100_000 })).map((l) => l.id)
              : ids;
          if (todo.length === 0) process.stdout.write("no dead letters to replay\n");
          for (const id of todo) {
            const r = await replayDeadLetter(db, id, {
              transactionTimeoutMs: config.worker.transactionTimeoutMs,
            });
            left += r.remainingRows;
            if (r.outcome === "unknown") {
              unknown++;
              process.stdout.write(`#${id}: unknown, no dead letter has this id\n`);
              continue;
            }
            process.stdout.write(
              `#${id}: ${r.outcome}, ${r.appliedRows} row(s) applied, ${r.remainingRows} left${r.detail !== undefined ? `: ${r.detail}` : ""}\n`,
            );
          }
        } finally {
          await db.$disconnect();
        }
        // Rows still refused, or an id that names nothing: exit 1, so a script
        // replaying after a fix sees it did not take.
        process.exit(left > 0 || unknown > 0 ? 1 : 0);
      }),
    );

  return program;
}

/** Subcommand paths the CLI has, e.g. "gateway", "key create". */
export function subcommands(program: Command = buildProgram()): string[] {
  const out: string[] = [];
  const walk = (c: Command, prefix: string[]): void => {
    for (const sub of c.commands) {
      const path = [...prefix, sub.name()];
      if (sub.commands.length > 0) walk(sub, path);
      else out.push(path.join(" "));
    }
  };
  walk(program, []);
  return out;
}

/**
 * The main job (`npm start`): the seed's whole topology on one machine.
 * Applies migrations, starts a flush worker and several gateway processes
 * with built-in traffic, prints what arrives in PostgreSQL, and on exit
 * (Ctrl-C or --duration) drains everything and reconciles: the spend every
 * gateway recorded must equal what PostgreSQL gained, exactly.
 */
import { fork, type ChildProcess } from "node:child_process";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { Queue } from "bullmq";
import pg from "pg";
import { loadConfig, redact, reportIgnoredKeys } from "../config/config.js";
import type { GatewayReport } from "../demo/demo-gateway.js";
import { decimalToPico, picoToDecimal } from "../contract/money.js";
import { migrate } from "../persist/migrate.js";
import { createRedis } from "../redis/connection.js";
import { redisKeys } from "../redis/keys.js";
import { pendingJobs } from "../queue/partitions.js";

const HELP = `Usage: npm start -- [options]

Runs migrations, one flush worker and N gateway processes with synthetic
traffic against Redis and PostgreSQL, and reconciles the totals on exit.

Options:
  --config <path>     proxy_config.yaml (default: none; local Redis and PostgreSQL)
  --gateways <n>      gateway processes (default 3)
  --rate <n>          events per second per gateway (default 200)
  --duration <s>      stop by itself after this many seconds (default: until Ctrl-C)
  --help              this text
`;

const { values } = parseArgs({
  options: {
    config: { type: "string" },
    gateways: { type: "string", default: "3" },
    rate: { type: "string", default: "200" },
    duration: { type: "string" },
    help: { type: "boolean", default: false },
  },
});
if (values.help) {
  process.stdout.write(HELP);
  process.exit(0);
}
const gateways = Number(values.gateways);
const rate = Number(values.rate);
const duration = values.duration === undefined ? undefined : Number(values.duration);
if (!Number.isInteger(gateways) || gateways < 1 || gateways > 64)
  fail("--gateways must be an integer from 1 to 64");
if (!Number.isFinite(rate) || rate <= 0) fail("--rate must be a positive number");
if (duration !== undefined && !(duration > 0))
  fail("--duration must be a positive number of seconds");

function fail(msg: string): never {
  process.stderr.write(`error: ${msg}\n`);
  process.exit(2);
}
const say = (msg: string): void => void process.stdout.write(`[demo] ${msg}\n`);

const config = loadConfig(values.config);
reportIgnoredKeys(config.ignoredLiteLLMKeys, say);
say(
  `PostgreSQL ${redact(config.databaseUrl)}, Redis ${config.redis.host}:${config.redis.port}, prefix "${config.keyPrefix}", buffer ${config.useRedisBuffer ? "on (Redis)" : "off (direct to PostgreSQL)"}`,
);
const { applied } = await migrate({ databaseUrl: config.databaseUrl });
say(
  applied.length > 0 ? `applied migrations: ${applied.join(", ")}` : "database schema up to date",
);

const pgClient = new pg.Client({ connectionString: config.databaseUrl });
await pgClient.connect();
async function committed(): Promise<{ spend: bigint; requests: bigint }> {
  const r = await pgClient.query<{ spend: string; requests: string }>(
    `SELECT (SELECT COALESCE(sum(spend), 0)::text FROM "LiteLLM_VerificationToken") AS spend,
            (SELECT COALESCE(sum(api_requests), 0)::text FROM "LiteLLM_DailyUserSpend") AS requests`,
  );
  return {
    spend: decimalToPico(r.rows[0]?.spend ?? "0"),
    requests: BigInt(r.rows[0]?.requests ?? "0"),
  };
}

const redis = config.useRedisBuffer ? createRedis(config.redis, "producer") : undefined;
const keys = redisKeys(config.keyPrefix);
const backlog = (): Promise<number> =>
  redis === undefined
    ? Promise.resolve(0)
    : pendingJobs(redis, config.keyPrefix, config.partitions);

// The reconciliation compares what these gateways record with what PostgreSQL
// gains, so nothing else may write under this prefix meanwhile: another flush
// worker (an earlier demo still running, a deployment) is refused here.
if (redis !== undefined) {
  const flushQueue = new Queue(keys.flushQueue, { connection: redis, prefix: keys.bullPrefix });
  flushQueue.on("error", () => undefined);
  let others: number | undefined;
  try {
    others = await flushQueue.getWorkersCount();
  } catch (err) {
    // CLIENT LIST may be refused (managed Redis): go on, the reconciliation will tell.
    say(`could not list flush workers (${(err as Error).message}); not checking for another run`);
  }
  await flushQueue.close();
  if (others !== undefined && others > 0) {
    process.stderr.write(
      `error: ${others} flush worker(s) already connected under prefix "${config.keyPrefix}" (another demo, or a deployment): stop them, or give this run its own spend_buffer_settings.key_prefix, so its totals can be reconciled\n`,
    );
    process.exit(1);
  }
}

// Children log warnings and errors only, unless LOG_LEVEL says otherwise: the status lines are the show.
const env = {
  LOG_LEVEL: "warn",
  ...process.env,
  ...(values.config !== undefined ? { SPEND_CONFIG: values.config } : {}),
};
const root = (p: string): string => fileURLToPath(new URL(`../../${p}`, import.meta.url));
// Children get their own process group: a terminal's Ctrl-C signals the whole
// foreground group, and a flush worker that stopped on it at once would leave
// the gateways' last batches uncommitted. Only this process takes the signal
// and stops them in order (gateways drain, then the worker commits), and
// takes them along if it exits any other way.
const children: ChildProcess[] = [];
process.on("exit", () => {
  for (const c of children) if (c.exitCode === null) c.kill("SIGTERM");
});
const worker = config.useRedisBuffer
  ? fork(root("workers/flush-worker.ts"), [], {
      env: { ...env, METRICS_PORT: String(config.metricsPort) },
      execArgv: ["--import", "tsx"],
      detached: true,
    })
  : undefined;
if (worker !== undefined) children.push(worker);

// Jobs an earlier run left in Redis (stopped before its worker committed them)
// are committed by this worker first: they belong to no gateway of this run.
const leftover = await backlog();
if (leftover > 0) {
  say(`${leftover} spend jobs left under this prefix by an earlier run: committing them first`);
  const until = Date.now() + 120_000;
  while ((await backlog()) > 0) {
    if (Date.now() > until) {
      process.stderr.write("error: the earlier run's jobs were not committed within 120 s\n");
      process.exit(1);
    }
    await new Promise((r) => setTimeout(r, 250));
  }
}
const baseline = await committed();

const recorded = new Map<number, GatewayReport>();
const gatewayProcs: ChildProcess[] = [];
for (let i = 0; i < gateways; i++) {
  const child = fork(root("src/demo/demo-gateway.ts"), [], {
    env: {
      ...env,
      GATEWAY_INDEX: String(i),
      RATE: String(rate),
      METRICS_PORT: String(config.metricsPort + 1 + i),
    },
    execArgv: ["--import", "tsx"],
    detached: true,
  });
  child.on("message", (m: GatewayReport) => recorded.set(m.gateway, m));
  gatewayProcs.push(child);
  children.push(child);
}
say(
  `started ${worker !== undefined ? `1 flush worker (metrics :${config.metricsPort}) and ` : ""}${gateways} gateways (metrics :${config.metricsPort + 1}-${config.metricsPort + gateways}), ${rate} events/s each`,
);

const totals = (): { events: number; spend: bigint } => {
  let events = 0;
  let spend = 0n;
  for (const r of recorded.values()) {
    events += r.events;
    spend += BigInt(r.spendPico);
  }
  return { events, spend };
};

const started = Date.now();
const status = setInterval(() => {
  void (async () => {
    const c = await committed();
    const t = totals();
    say(
      `t=${Math.round((Date.now() - started) / 1000)}s recorded ${t.events} events ($${picoToDecimal(t.spend)}), ` +
        `committed ${c.requests - baseline.requests} requests ($${picoToDecimal(c.spend - baseline.spend)}), backlog ${await backlog()} jobs`,
    );
  })().catch((err: unknown) => say(`status failed: ${(err as Error).message}`));
}, 5_000);

let stopping = false;
async function shutdown(): Promise<void> {
  if (stopping) return;
  stopping = true;
  clearInterval(status);
  say("stopping gateways: each drains its buffer before it exits");
  await Promise.all(
    gatewayProcs.map(
      (c) =>
        new Promise<void>((resolve) => {
          if (c.exitCode !== null) return resolve();
          c.once("exit", () => resolve());
          c.kill("SIGTERM");
        }),
    ),
  );
  const t = totals();
  say(`waiting for the flush worker to commit the backlog`);
  const deadline = Date.now() + 120_000;
  let c = await committed();
  // Entity and daily rows commit in separate jobs: wait for both (key spend and daily
  // requests), or the worker is stopped with daily jobs still queued.
  while (
    (c.spend - baseline.spend < t.spend || c.requests - baseline.requests < BigInt(t.events)) &&
    Date.now() < deadline
  ) {
    await new Promise((r) => setTimeout(r, 250));
    c = await committed();
  }
  worker?.kill("SIGTERM");
  const gained = c.spend - baseline.spend;
  const exact = gained === t.spend && c.requests - baseline.requests === BigInt(t.events);
  say(
    `recorded ${t.events} events, $${picoToDecimal(t.spend)}; PostgreSQL gained ${c.requests - baseline.requests} requests, $${picoToDecimal(gained)}`,
  );
  say(
    exact
      ? "reconciled: exact, nothing lost, nothing counted twice"
      : "NOT RECONCILED: totals differ (was another writer using this database?)",
  );
  await pgClient.end();
  redis?.disconnect();
  process.exit(exact ? 0 : 1);
}
process.on("SIGINT", () => void shutdown());
process.on("SIGTERM", () => void shutdown());
if (duration !== undefined) setTimeout(() => void shutdown(), duration * 1000);

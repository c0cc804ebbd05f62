import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { mkdtempSync, readdirSync, writeFileSync } from "node:fs";
import { createServer, type Server } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { Queue } from "bullmq";
import { Redis } from "ioredis";
import pg from "pg";
import { checkRedis } from "../src/cli/preflight.js";
import { subcommands } from "../src/cli/program.js";
import { loadConfig } from "../src/config/config.js";
import { redisKeys } from "../src/redis/keys.js";
import { createTestDatabase, type TestDatabase } from "./support/db.js";
import { TestRedisServer, testPort } from "./support/redis-server.js";
import { cleanRedis, TEST_REDIS_URL, uniquePrefix } from "./support/redis.js";
import { waitFor } from "./support/wait.js";

/** The operators' CLI, run as operators run it: the package's bin (the build), in its own process. */

const ROOT = fileURLToPath(new URL("..", import.meta.url));
const BIN = join(ROOT, "dist/cli/main.js");
const redisUrl = new URL(TEST_REDIS_URL);

/** The environment without the variables that would override a config file. */
function cleanEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    LOG_LEVEL: "info",
    CLI_MASTER_KEY: "sk-cli-master-key",
  };
  delete env.REDIS_URL;
  delete env.REDIS_CLUSTER_NODES;
  delete env.DATABASE_URL;
  delete env.SPEND_CONFIG;
  delete env.METRICS_PORT;
  return { ...env, ...extra };
}

interface Result {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs the CLI without blocking, so independent runs overlap (each is mostly Node's start-up). */
function runAsync(args: string[], env: Record<string, string> = {}): Promise<Result> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [BIN, ...args], {
      cwd: ROOT,
      env: cleanEnv(env),
      stdio: ["ignore", "pipe", "pipe"],
    });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
    child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => child.kill("SIGKILL"), 60_000);
    child.on("exit", (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

/** At most `limit` at a time, results in order. */
async function pool<T, R>(
  items: readonly T[],
  limit: number,
  fn: (t: T) => Promise<R>,
): Promise<R[]> {
  const out: R[] = new Array<R>(items.length);
  let next = 0;
  await Promise.all(
    Array.from({ length: limit }, async () => {
      while (next < items.length) {
        const i = next++;
        out[i] = await fn(items[i] as T);
      }
    }),
  );
  return out;
}

function run(
  args: string[],
  env: Record<string, string> = {},
): { code: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [BIN, ...args], {
    cwd: ROOT,
    env: cleanEnv(env),
    encoding: "utf8",
    timeout: 60_000,
  });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

/**
 * A refusal as the operator sees it: exit 2, exactly one line on stderr saying
 * `error: …`, and no stack frame.
 */
function assertRefused(r: Result, message: RegExp, what: string): void {
  const detail = `${what}: exit ${r.code}\n${r.stderr}`;
  assert.equal(r.code, 2, detail);
  assert.match(r.stderr, /^error: [^\n]+\n$/, `${what}: one line on stderr\n${r.stderr}`);
  assert.doesNotMatch(r.stderr, /\n {4}at /, detail);
  assert.match(r.stderr, message, detail);
}

function escapeRegExp(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}

/** Holds a TCP port, as another process would. */
async function holdPort(): Promise<Server> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, "0.0.0.0", resolve));
  return server;
}

const dir = mkdtempSync(join(tmpdir(), "spend-cli-"));
let n = 0;
function configFile(yaml: string): string {
  const p = join(dir, `config-${n++}.yaml`);
  writeFileSync(p, yaml);
  return p;
}

function goodConfig(prefix: string, databaseUrl: string): string {
  return configFile(`
general_settings:
  use_redis_transaction_buffer: true
  proxy_batch_write_at: 3600
  database_url: ${databaseUrl}
  master_key: os.environ/CLI_MASTER_KEY
litellm_settings:
  cache: true
  cache_params:
    type: redis
    host: ${redisUrl.hostname}
    port: ${redisUrl.port || "6379"}
spend_buffer_settings:
  key_prefix: ${prefix}
  flush_jitter_seconds: 0
  model_prices:
    mock-small: { input_cost_per_token: "0.0000025", output_cost_per_token: "0.00001" }
`);
}

describe("haimaker-spend CLI", () => {
  let t: TestDatabase;
  const prefix = uniquePrefix("cli");
  let config: string;
  before(async () => {
    t = await createTestDatabase("cli");
    config = goodConfig(prefix, t.url);
  });
  after(async () => {
    await cleanRedis(prefix);
    await t.drop();
  });

  it("has the operators' subcommands, each with --help naming --config", async () => {
    assert.deepEqual(subcommands(), [
      "gateway",
      "worker",
      "migrate",
      "key create",
      "status",
      "dead-letter list",
      "dead-letter replay",
    ]);
    const [root, ...subs] = await pool([[], ...subcommands().map((c) => c.split(" "))], 3, (args) =>
      runAsync([...args, "--help"]),
    );
    assert.equal(root?.code, 0);
    assert.match(root?.stdout ?? "", /Usage: haimaker-spend/);
    subcommands().forEach((sub, i) => {
      const r = subs[i];
      assert.equal(r?.code, 0, `${sub} --help: ${r?.stderr ?? ""}`);
      assert.match(r?.stdout ?? "", new RegExp(`Usage: haimaker-spend ${sub} `), sub);
      assert.match(r?.stdout ?? "", /--config <path>/, sub);
    });
  });

  it("fails fast with exit 2 and a specific message on bad configuration", async () => {
    const cases: [string, string[], string, RegExp][] = [
      [
        "unknown key",
        ["gateway", "worker", "status", "key create --user u", "migrate"],
        "general_settings:\n  bogus_key: 1\n",
        /general_settings: Unrecognized key: "bogus_key"/,
      ],
      [
        "wrong type",
        ["gateway", "status"],
        "spend_buffer_settings:\n  gateway_port: four thousand\n",
        /spend_buffer_settings\.gateway_port: .*expected number/,
      ],
      [
        "float price",
        ["gateway"],
        'spend_buffer_settings:\n  model_prices:\n    m: { input_cost_per_token: 0.0000025, output_cost_per_token: "0.00001" }\n',
        /model_prices\.m\.input_cost_per_token: must be a quoted decimal string/,
      ],
      [
        "buffer without Redis",
        ["gateway", "worker"],
        "general_settings:\n  use_redis_transaction_buffer: true\n",
        /use_redis_transaction_buffer is true but no Redis is configured/,
      ],
      [
        "missing secret",
        ["gateway"],
        "general_settings:\n  master_key: os.environ/CLI_NOT_SET_ANYWHERE\n",
        /general_settings\.master_key: environment variable CLI_NOT_SET_ANYWHERE is not set/,
      ],
      [
        "Redis unreachable",
        ["gateway", "worker", "status"],
        `general_settings:\n  use_redis_transaction_buffer: true\n  database_url: ${t.url}\nlitellm_settings:\n  cache_params: { type: redis, host: 127.0.0.1, port: 1 }\n`,
        /Redis at 127\.0\.0\.1:1\/0 is unreachable: .*ECONNREFUSED/,
      ],
      [
        "PostgreSQL unreachable",
        ["gateway", "key create --user u", "migrate"],
        "general_settings:\n  database_url: postgresql://postgres@127.0.0.1:1/nope\n",
        /PostgreSQL at postgresql:\/\/\*\*\*@127\.0\.0\.1:1\/nope is unreachable: .*ECONNREFUSED/,
      ],
      [
        "worker with the buffer off",
        ["worker"],
        `general_settings:\n  database_url: ${t.url}\n`,
        /no flush worker is needed/,
      ],
    ];
    const runs = cases.flatMap(([what, commands, yaml, message]) => {
      const path = configFile(yaml);
      return commands.map((cmd) => ({ what, cmd, path, message }));
    });
    const results = await pool(runs, 2, async ({ cmd, path }) => {
      const started = Date.now();
      const r = await runAsync([...cmd.split(" "), "--config", path]);
      return { ...r, ms: Date.now() - started };
    });
    runs.forEach(({ what, cmd, message }, i) => {
      const r = results[i];
      assert.ok(r !== undefined);
      assert.equal(r.code, 2, `${what}, ${cmd}: exit ${r.code}\n${r.stderr}`);
      assert.match(r.stderr, message, `${what}, ${cmd}`);
      assert.ok(r.ms < 20_000, `${what}, ${cmd}: fails fast (${r.ms} ms)`);
    });
    const missing = run(["status", "--config", join(dir, "absent.yaml")]);
    assert.equal(missing.code, 2);
    assert.match(missing.stderr, /cannot read config file/);
    const noOwner = run(["key", "create", "--config", config]);
    assert.equal(noOwner.code, 2);
    assert.match(noOwner.stderr, /at least one of --user, --team, --org/);
  });

  it("migrate creates and migrates a new database, and is idempotent", async () => {
    const u = new URL(t.url);
    const name = `${t.name}_m`;
    u.pathname = `/${name}`;
    const path = configFile(`general_settings:\n  database_url: ${u.toString()}\n`);
    try {
      const first = run(["migrate", "--config", path]);
      assert.equal(first.code, 0, first.stderr);
      // Every migration the repository has, whatever their number.
      const migrations = readdirSync(join(ROOT, "prisma/migrations"), { withFileTypes: true })
        .filter((d) => d.isDirectory())
        .map((d) => d.name)
        .sort();
      assert.equal(
        first.stdout,
        `Applied ${migrations.length} migration(s): ${migrations.join(", ")}\n`,
      );
      const again = run(["migrate", "--config", path]);
      assert.equal(again.code, 0, again.stderr);
      assert.match(again.stdout, /No pending migrations/);
    } finally {
      const admin = new pg.Client({ connectionString: t.url });
      await admin.connect();
      await admin.query(`DROP DATABASE IF EXISTS "${name}" WITH (FORCE)`);
      await admin.end();
    }
  });

  it("key create makes a key the gateway accepts; SIGTERM drains; status shows the queued spend", async () => {
    const created = run([
      "key",
      "create",
      "--config",
      config,
      "--user",
      "dana",
      "--team",
      "ops",
      "--org",
      "acme",
      "--alias",
      "cli-key",
    ]);
    assert.equal(created.code, 0, created.stderr);
    const key = JSON.parse(created.stdout) as {
      key: string;
      token: string;
      user_id: string;
      key_alias: string;
    };
    assert.match(key.key, /^sk-/);
    assert.equal(key.user_id, "dana");
    assert.equal(key.key_alias, "cli-key");
    assert.ok(!created.stderr.includes(key.key), "the key is printed once, on stdout");
    const stored = await t.db.verificationToken.findUnique({ where: { token: key.token } });
    assert.equal(stored?.teamId, "ops");

    const child = spawn(
      process.execPath,
      [BIN, "gateway", "--config", config, "--port", "0", "--host", "127.0.0.1"],
      {
        cwd: ROOT,
        env: cleanEnv({ CLI_MASTER_KEY: "sk-cli-master-key" }),
        stdio: ["ignore", "pipe", "pipe"],
      },
    );
    let out = "";
    child.stdout.on("data", (d: Buffer) => (out += d.toString()));
    child.stderr.on("data", (d: Buffer) => (out += d.toString()));
    const exited = new Promise<number | null>((resolve) =>
      child.on("exit", (code) => resolve(code)),
    );
    try {
      let port = 0;
      await waitFor(
        "the gateway to listen",
        () => {
          const m = /"port":(\d+)[^\n]*"msg":"gateway listening"/.exec(out);
          port = Number(m?.[1] ?? 0);
          return port > 0;
        },
        30_000,
      );
      const chat = (k: string): Promise<Response> =>
        fetch(`http://127.0.0.1:${port}/v1/chat/completions`, {
          method: "POST",
          headers: { "content-type": "application/json", authorization: `Bearer ${k}` },
          body: JSON.stringify({
            model: "mock-small",
            messages: [{ role: "user", content: "hello from the cli" }],
          }),
        });
      const ok = await chat(key.key);
      assert.equal(ok.status, 200, await ok.clone().text());
      assert.equal((await chat(`${key.key}x`)).status, 401);
      assert.ok(!out.includes(key.key), "the plaintext key never reaches the logs");
      assert.ok(!out.includes("sk-cli-master-key"), "nor does the master key");
    } finally {
      child.kill("SIGTERM");
    }
    assert.equal(await exited, 0, out);
    assert.match(out, /"msg":"stopped"/);

    const status = run(["status", "--config", config]);
    assert.equal(status.code, 0, status.stderr);
    assert.match(status.stdout, /entity +\{spend-update\} +wait 1 +active 0/);
    assert.match(status.stdout, /daily +\{daily-spend-update\} +wait 1 +active 0/);
    assert.match(status.stdout, /flush +\{spend-flush\} +wait 0/);
    assert.match(status.stdout, /backlog: 2 jobs waiting, oldest \d+\.\d s old/);
    assert.match(status.stdout, /flush lock: free/);
    assert.match(status.stdout, /last successful flush: never/);
    const json = run(["status", "--config", config, "--json"]);
    assert.equal(json.code, 0);
    const s = JSON.parse(json.stdout) as {
      backlog: { jobs: number };
      queues: { role: string; counts: { wait: number } }[];
    };
    assert.equal(s.backlog.jobs, 2);
    assert.deepEqual(
      s.queues.map((q) => [q.role, q.counts.wait]),
      [
        ["entity", 1],
        ["daily", 1],
        ["flush", 0],
      ],
    );
  });

  it("refuses a bad LOG_LEVEL, METRICS_PORT or --port with exit 2 and one line", async () => {
    const runs: [string, string[], Record<string, string>, RegExp][] = [
      ...["gateway", "worker", "migrate"].map(
        (cmd): [string, string[], Record<string, string>, RegExp] => [
          `LOG_LEVEL=verbose ${cmd}`,
          [...cmd.split(" "), "--config", config],
          { LOG_LEVEL: "verbose" },
          /^error: LOG_LEVEL must be one of fatal, error, warn, info, debug, trace, silent, got "verbose"$/m,
        ],
      ),
      [
        "METRICS_PORT=abc worker",
        ["worker", "--config", config],
        { METRICS_PORT: "abc" },
        /^error: METRICS_PORT must be a port number from 0 to 65535, got "abc"$/m,
      ],
      [
        "METRICS_PORT=99999 worker",
        ["worker", "--config", config],
        { METRICS_PORT: "99999" },
        /METRICS_PORT must be a port number from 0 to 65535, got "99999"/,
      ],
      ...[
        ["gateway", "99999"],
        ["gateway", "abc"],
        ["worker", "1.5"],
      ].map(([cmd = "", port = ""]): [string, string[], Record<string, string>, RegExp] => [
        `${cmd} --port ${port}`,
        [cmd, "--config", config, "--port", port],
        {},
        new RegExp(
          `^error: option '-p, --port <port>' argument '${escapeRegExp(port)}' is invalid\\. Expected a port number from 0 to 65535\\.`,
        ),
      ]),
      ["unknown option", ["status", "--bogus"], {}, /^error: unknown option '--bogus'/],
    ];
    const results = await pool(runs, 2, ([, args, env]) => runAsync(args, env));
    runs.forEach(([what, , , message], i) => {
      const r = results[i];
      assert.ok(r !== undefined);
      assertRefused(r, message, what);
    });
  });

  it("refuses a port already in use with exit 2 and one line (gateway and worker)", async () => {
    const prefix = uniquePrefix("cli-port");
    const own = goodConfig(prefix, t.url);
    const held = await holdPort();
    try {
      const port = (held.address() as { port: number }).port;
      const results = await pool(["gateway", "worker"], 2, (cmd) =>
        runAsync([cmd, "--config", own, "--port", String(port)]),
      );
      results.forEach((r, i) => {
        assertRefused(r, new RegExp(`^error: port ${port} is already in use$`, "m"), `${i}`);
      });
    } finally {
      held.close();
      await cleanRedis(prefix);
    }
  });

  it("refuses REDIS_CLUSTER_NODES naming a standalone Redis (the real one), with exit 2", async () => {
    const node = `${redisUrl.hostname}:${redisUrl.port || "6379"}`;
    const fileNodes = configFile(
      `general_settings:\n  use_redis_transaction_buffer: true\n  database_url: ${t.url}\nlitellm_settings:\n  cache_params: { type: redis, cluster_nodes: ['${node}'] }\n`,
    );
    const runs: [string, string[], Record<string, string>, RegExp][] = [
      ...["gateway", "status"].map((cmd): [string, string[], Record<string, string>, RegExp] => [
        `REDIS_CLUSTER_NODES ${cmd}`,
        [cmd, "--config", config],
        { REDIS_CLUSTER_NODES: node },
        new RegExp(
          `^error: REDIS_CLUSTER_NODES names ${node.replaceAll(".", "\\.")}, which is a standalone Redis \\(cluster support disabled\\)$`,
          "m",
        ),
      ]),
      [
        "cache_params.cluster_nodes status",
        ["status", "--config", fileNodes],
        {},
        /^error: litellm_settings\.cache_params\.cluster_nodes names .*, which is a standalone Redis \(cluster support disabled\)$/m,
      ],
      [
        "no seed answers",
        ["status", "--config", config],
        { REDIS_CLUSTER_NODES: "127.0.0.1:1,127.0.0.1:2" },
        /^error: Redis Cluster seed nodes \(REDIS_CLUSTER_NODES\) are all unreachable: 127\.0\.0\.1:1 \(connect ECONNREFUSED[^)]*\), 127\.0\.0\.1:2 \(/m,
      ],
    ];
    const results = await pool(runs, 2, ([, args, env]) => runAsync(args, env));
    runs.forEach(([what, , , message], i) => {
      const r = results[i];
      assert.ok(r !== undefined);
      assertRefused(r, message, what);
    });
  });

  it("preflight accepts a Redis Cluster only once its state is ok", async () => {
    // A one-node cluster of this test's own: cluster mode on, no slots yet (state fail).
    const server = new TestRedisServer(testPort(20), [
      "--cluster-enabled",
      "yes",
      "--cluster-port",
      String(testPort(120)),
      "--cluster-config-file",
      "nodes.conf",
      "--save",
      "",
      "--appendonly",
      "no",
    ]);
    await server.start();
    const admin = new Redis(server.url);
    try {
      const cfg = loadConfig(undefined, { REDIS_CLUSTER_NODES: `127.0.0.1:${server.port}` }).redis;
      await assert.rejects(
        checkRedis(cfg),
        new RegExp(
          `^StartupError: Redis Cluster node 127\\.0\\.0\\.1:${server.port} \\(REDIS_CLUSTER_NODES\\) reports cluster_state:fail$`,
        ),
      );
      await admin.call("CLUSTER", "ADDSLOTSRANGE", "0", "16383");
      await waitFor(
        "cluster_state:ok",
        async () => String(await admin.call("CLUSTER", "INFO")).includes("cluster_state:ok"),
        10_000,
      );
      await checkRedis(cfg);
    } finally {
      admin.disconnect();
      await server.destroy();
    }
  });

  it("refuses a Redis database index the server does not have (the real Redis), with exit 2", async () => {
    const probe = new Redis(TEST_REDIS_URL);
    let databases: number;
    try {
      const reply = await probe.config("GET", "databases");
      databases = Number(reply[1]);
    } finally {
      probe.disconnect();
    }
    const index = databases + 4;
    const url = `redis://${redisUrl.hostname}:${redisUrl.port || "6379"}/${index}`;
    const expected = `Redis at ${redisUrl.hostname}:${redisUrl.port || "6379"} has no database ${index} (its \`databases\` setting is ${databases})`;
    const results = await pool(["gateway", "status"], 2, (cmd) =>
      runAsync([cmd, "--config", config], { REDIS_URL: url }),
    );
    results.forEach((r, i) => {
      assertRefused(r, new RegExp(`^error: ${escapeRegExp(expected)}$`, "m"), `${i}`);
    });
    // The last database the server has is fine.
    const last = loadConfig(undefined, { REDIS_URL: url.replace(/\d+$/, String(databases - 1)) });
    await checkRedis(last.redis);
  });

  it("refuses to start on a flush partition mismatch with exit 2 and one line", async () => {
    const prefix = uniquePrefix("cli-parts");
    const keys = redisKeys(prefix);
    const redis = new Redis(TEST_REDIS_URL);
    const entity = new Queue(keys.spendQueue, { connection: redis, prefix: keys.bullPrefix });
    try {
      await redis.set(keys.partitionCount, "1");
      await entity.add("spend", { pending: true });
      const two = configFile(`general_settings:
  use_redis_transaction_buffer: true
  database_url: ${t.url}
litellm_settings:
  cache_params: { type: redis, host: ${redisUrl.hostname}, port: ${redisUrl.port || "6379"} }
spend_buffer_settings:
  key_prefix: ${prefix}
  flush_partitions: 2
`);
      const [r, gw] = await Promise.all([
        runAsync(["worker", "--config", two, "--port", "0"]),
        runAsync(["gateway", "--config", two, "--port", "0"]),
      ]);
      assertRefused(
        r,
        /^error: Redis records 1 flush partition\(s\).* configured for 2\b.*Drain first/m,
        "worker",
      );
      // A gateway never switches the count, drained or not.
      await entity.obliterate({ force: true });
      const drained = await runAsync(["gateway", "--config", two, "--port", "0"]);
      for (const [res, what] of [
        [gw, "gateway"],
        [drained, "gateway, drained"],
      ] as const)
        assertRefused(res, /a gateway never changes the count/, what);
      assert.equal(await redis.get(keys.partitionCount), "1");
    } finally {
      await entity.close();
      redis.disconnect();
      await cleanRedis(prefix);
    }
  });

  it("dead-letter list shows what the flush set aside; replay applies it once, exit 1 while rows are still refused", async () => {
    const { applyBatches } = await import("../src/persist/apply-batches.js");
    await t.db.$executeRawUnsafe(
      `ALTER TABLE "LiteLLM_TagTable" ADD CONSTRAINT cli_no_blocked CHECK (tag_name <> 'blocked-by-cli')`,
    );
    try {
      await t.db.$transaction((tx) =>
        applyBatches(
          tx,
          [
            {
              batchId: "cli.dead.1",
              entity: [
                ["tag", "fine-by-cli", "", "5"],
                ["tag", "blocked-by-cli", "", "7000000"],
              ],
            },
          ],
          { isolate: true, partition: "cli" },
        ),
      );
      const list = await runAsync(["dead-letter", "list", "--config", config]);
      assert.equal(list.code, 0, list.stderr);
      assert.match(
        list.stdout,
        /^#\d+ \S+ entity batch cli\.dead\.1: 1 row\(s\), database 23514\n/,
      );
      const json = await runAsync(["dead-letter", "list", "--json", "--config", config]);
      const [letter] = JSON.parse(json.stdout) as { id: string; rows: number }[];
      assert.equal(letter?.rows, 1);

      const still = await runAsync(["dead-letter", "replay", "--all", "--config", config]);
      assert.equal(still.code, 1, still.stderr);
      assert.match(still.stdout, /refused, 0 row\(s\) applied, 1 left/);

      await t.db.$executeRawUnsafe(`ALTER TABLE "LiteLLM_TagTable" DROP CONSTRAINT cli_no_blocked`);
      const done = await runAsync([
        "dead-letter",
        "replay",
        "--id",
        letter?.id ?? "",
        "--config",
        config,
      ]);
      assert.equal(done.code, 0, done.stderr);
      assert.match(done.stdout, /replayed, 1 row\(s\) applied, 0 left/);
      const tag = await t.db.tagTable.findUnique({ where: { tagName: "blocked-by-cli" } });
      assert.equal(tag?.spend.toFixed(12), "0.000007000000");
      const again = await runAsync([
        "dead-letter",
        "replay",
        "--id",
        letter?.id ?? "",
        "--config",
        config,
      ]);
      assert.match(again.stdout, /gone, 0 row\(s\) applied/);
      assert.equal(
        (await t.db.tagTable.findUnique({ where: { tagName: "blocked-by-cli" } }))?.spend.toFixed(
          12,
        ),
        "0.000007000000",
        "applied once",
      );
      assertRefused(
        await runAsync(["dead-letter", "replay", "--config", config]),
        /give either --id/,
        "replay with neither --id nor --all",
      );
    } finally {
      await t.db.$executeRawUnsafe(
        `ALTER TABLE "LiteLLM_TagTable" DROP CONSTRAINT IF EXISTS cli_no_blocked`,
      );
    }
  });

  it("keeps passwords out of every start-up error, whatever they hold", async () => {
    const runs: [string, Record<string, string>, string, RegExp][] = [
      [
        "slash in a PostgreSQL password",
        { DATABASE_URL: "postgresql://postgres:hun/ter2@127.0.0.1:1/nope" },
        "hun/ter2",
        /^error: DATABASE_URL: the part before the last "@" holds "\/", "\?" or "#" \(in postgresql:\/\/\*\*\*@127\.0\.0\.1:1\/nope\)/m,
      ],
      [
        "@ in a PostgreSQL password",
        { DATABASE_URL: "postgresql://postgres:hun@ter2@127.0.0.1:1/nope" },
        "hun@ter2",
        /^error: PostgreSQL at postgresql:\/\/\*\*\*@127\.0\.0\.1:1\/nope is unreachable: .*ECONNREFUSED/m,
      ],
      [
        "libpq key=value DSN",
        { DATABASE_URL: "host=127.0.0.1 port=1 password='hun ter2' dbname=nope" },
        "hun ter2",
        /^error: DATABASE_URL is a key=value connection string \(host=127\.0\.0\.1 port=1 password=\*\*\* dbname=nope\); use a postgresql:\/\/ URL$/m,
      ],
      [
        "slash in a Redis password",
        { REDIS_URL: "redis://:hun/ter2@127.0.0.1:1/0" },
        "hun/ter2",
        /^error: REDIS_URL: the part before the last "@"/m,
      ],
      [
        "password in the query string",
        { DATABASE_URL: "postgresql://postgres@127.0.0.1:1/nope?password=hunter2secret" },
        "hunter2secret",
        /^error: PostgreSQL at postgresql:\/\/\*\*\*@127\.0\.0\.1:1\/nope\?password=\*\*\* is unreachable/m,
      ],
    ];
    const results = await pool(runs, 2, ([, env]) => runAsync(["status"], env));
    runs.forEach(([what, , secret, message], i) => {
      const r = results[i];
      assert.ok(r !== undefined);
      assertRefused(r, message, what);
      assert.ok(!r.stderr.includes(secret) && !r.stdout.includes(secret), `${what}: ${r.stderr}`);
    });
  });
});

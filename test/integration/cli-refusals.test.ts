import { readFileSync } from "node:fs";
import assert from "node:assert/strict";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { Redis } from "ioredis";
import { checkRedis } from "../../src/cli/preflight.js";
import { subcommands } from "../../src/cli/program.js";
import { loadConfig } from "../../src/config/config.js";
import {
  assertRefused,
  configFile,
  dir,
  escapeRegExp,
  goodConfig,
  holdPort,
  pool,
  redisUrl,
  run,
  runAsync,
} from "../support/cli.js";
import { createTestDatabase, type TestDatabase } from "../support/db.js";
import { REPO_ROOT } from "../support/paths.js";
import { cleanRedis, TEST_REDIS_URL, uniquePrefix } from "../support/redis.js";

/**
 * The operators' CLI as operators run it (the build, its own process): every bad configuration or
 * start-up failure exits 2 with one line on stderr, no stack trace, no secret.
 */
describe("haimaker-spend CLI: refusing to start, in one line, exit 2", () => {
  let t: TestDatabase;
  const prefix = uniquePrefix("cli-refusals");
  let config: string;
  before(async () => {
    t = await createTestDatabase("cli_refusals");
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
    const version = await runAsync(["--version"]);
    assert.equal(version.code, 0, version.stderr);
    const pkg = JSON.parse(readFileSync(join(REPO_ROOT, "package.json"), "utf8")) as {
      version: string;
    };
    assert.equal(version.stdout.trim(), pkg.version);
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
        ["gateway", "key create --user u"],
        "general_settings:\n  bogus_key: 1\n",
        /general_settings: Unrecognized key: "bogus_key"/,
      ],
      [
        "wrong type",
        ["status"],
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
        ["gateway"],
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
        ["worker", "status"],
        `general_settings:\n  use_redis_transaction_buffer: true\n  database_url: ${t.url}\nlitellm_settings:\n  cache_params: { type: redis, host: 127.0.0.1, port: 1 }\n`,
        /Redis at 127\.0\.0\.1:1\/0 is unreachable: .*ECONNREFUSED/,
      ],
      [
        "PostgreSQL unreachable",
        ["gateway", "migrate"],
        "general_settings:\n  database_url: postgresql://postgres@127.0.0.1:1/nope\n",
        /PostgreSQL at postgresql:\/\/\*\*\*@127\.0\.0\.1:1\/nope is unreachable: .*ECONNREFUSED/,
      ],
      [
        "PostgreSQL answers: no such database",
        ["gateway"],
        `general_settings:\n  database_url: ${t.url}_missing\n`,
        /PostgreSQL at postgresql:\/\/.*_missing refused the connection: database ".*_missing" does not exist \(`haimaker-spend migrate` creates it\)/,
      ],
      [
        "PostgreSQL answers: no such role",
        ["gateway"],
        `general_settings:\n  database_url: ${t.url.replace("postgres@", "nosuchrole@")}\n`,
        /PostgreSQL at .* refused the credentials: role "nosuchrole" does not exist/,
      ],
      [
        "not a PostgreSQL URL",
        ["gateway"],
        "general_settings:\n  database_url: mysql://u@127.0.0.1/db\n",
        /general_settings\.database_url must be a PostgreSQL URL \(scheme postgresql or postgres\), got "mysql:\/\/\*\*\*@127\.0\.0\.1\/db"/,
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
    // LiteLLM's settings this project does not read: named once on stderr, not a refusal.
    const litellm = configFile(
      `${readFileSync(config, "utf8")}\nrouter_settings: { num_retries: 2 }\n`.replace(
        "litellm_settings:\n",
        "litellm_settings:\n  drop_params: true\n",
      ),
    );
    const named = run(["key", "create", "--config", litellm]);
    assert.equal(named.code, 2);
    assert.equal(
      named.stderr,
      "warning: ignored: LiteLLM settings this gateway does not use: router_settings, litellm_settings.drop_params\n" +
        "error: give at least one of --user, --team, --org\n",
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
      // Refused before it did anything: the worker never led, so never flushed.
      assert.doesNotMatch(results[1]?.stdout ?? "", /leads the flush/);
      const leader = new Redis(TEST_REDIS_URL);
      try {
        // (The gateway, refused too, may have registered the partition count and its queues.)
        const flushKeys = (await leader.keys(`${prefix}*`)).filter((k) => k.includes("flush"));
        assert.deepEqual(flushKeys, [], "the refused worker took part in the flush");
      } finally {
        leader.disconnect();
      }
    } finally {
      held.close();
      await cleanRedis(prefix);
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
    // A command that needs PostgreSQL to start (status shows Redis's side without it).
    const results = await pool(runs, 2, ([, env]) => runAsync(["dead-letter", "list"], env));
    runs.forEach(([what, , secret, message], i) => {
      const r = results[i];
      assert.ok(r !== undefined);
      assertRefused(r, message, what);
      assert.ok(!r.stderr.includes(secret) && !r.stdout.includes(secret), `${what}: ${r.stderr}`);
    });
  });
});

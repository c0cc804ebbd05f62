import { startFlushWorker } from "../../src/index.js";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { Writable } from "node:stream";
import { after, before, describe, it } from "node:test";
import { Redis } from "ioredis";
import { pino } from "pino";
import { ConfigError } from "../../src/config/config.js";
import { createLogger, LOG_REDACT_PATHS, silentLogger } from "../../src/observe/logger.js";
import { readTotals } from "../support/db-totals.js";
import { createTestDatabase, type TestDatabase } from "../support/db.js";
import { Harness } from "../support/harness.js";
import { Ledger } from "../support/ledger.js";
import { freePort, TestRedisServer } from "../support/redis-server.js";
import { testConfig, uniquePrefix } from "../support/redis.js";
import { waitFor } from "../support/wait.js";
import { REPO_ROOT } from "../support/paths.js";

describe("security", () => {
  let t: TestDatabase;
  let server: TestRedisServer;
  before(async () => {
    t = await createTestDatabase("security");
    // A Redis of this test's own, so every key in it can be accounted for.
    server = new TestRedisServer(await freePort());
    await server.start();
  });
  after(async () => {
    await server.destroy();
    await t.drop();
  });

  it("stores ids that carry SQL as plain data, and every key it creates lives under the prefix", async () => {
    const prefix = uniquePrefix("sec");
    const base = testConfig(prefix, t.url);
    const config = { ...base, redis: { ...base.redis, port: server.port } };
    const hostile = [
      `x'); DROP TABLE "LiteLLM_UserTable"; --`,
      `$1::text); DELETE FROM spend_applied_batch; --`,
      `"; TRUNCATE "LiteLLM_TagTable" CASCADE; --`,
      "Robert'); SELECT pg_sleep(10); --",
      // Array-literal syntax: columns travel as '{"…","…"}' text (src/persist/pg-array.ts).
      `a"b`,
      `back\\slash\\`,
      `\\"}, "injected`,
      "{x,y}",
      "NULL",
      " padded ",
      "comma,id",
      "é漢🙂",
    ];
    const h = new Harness(config, t.db);
    const worker = await startFlushWorker(config, {
      port: false,
      db: t.db,
      metrics: h.metrics,
      logger: silentLogger,
    });
    const ledger = new Ledger();
    try {
      const p = await h.producer();
      for (const id of hostile) {
        const e = {
          spend: "0.5",
          apiKey: id,
          userId: id,
          teamId: id,
          organizationId: id,
          endUserId: id,
          tags: [id],
          model: id,
        };
        p.record(e);
        ledger.record(e);
      }
      await p.close();
      await waitFor(
        "the scheduled flush",
        async () => (await readTotals(t.url)).size === ledger.totals.size,
        20_000,
      );
      const actual = await readTotals(t.url);
      for (const [k, v] of ledger.totals) assert.deepEqual(actual.get(k), v, k);

      const redis = new Redis(server.url);
      try {
        const keys = await redis.keys("*");
        assert.ok(keys.length > 0);
        const outside = keys.filter((k) => !k.startsWith(`${prefix}:`));
        assert.deepEqual(outside, [], "no key outside the configured prefix");
      } finally {
        redis.disconnect();
      }
    } finally {
      await worker.close();
      await h.close();
    }
  });

  it("redacts credentials from logs", () => {
    let out = "";
    const sink = new Writable({
      write(chunk: Buffer, _enc, cb) {
        out += chunk.toString();
        cb();
      },
    });
    const log = pino({ redact: { paths: LOG_REDACT_PATHS, censor: "***" } }, sink);
    log.info(
      {
        config: { redis: { password: "hunter2" }, databaseUrl: "postgresql://u:pw@db/x" },
        authorization: "Bearer sk-secret",
      },
      "starting",
    );
    assert.doesNotMatch(out, /hunter2|pw@db|sk-secret/);
    assert.match(out, /\*\*\*/);
  });

  it("hides credentials in any string a logger made by createLogger writes", () => {
    // createLogger writes to stdout: run it in a process of its own and read what it wrote.
    const script = `
      const { createLogger } = await import("./src/observe/logger.ts");
      const log = createLogger("probe");
      log.error({ err: "connect failed: redis://:p/ss@cache:6379/0" }, "Redis at redis://u:hun@ter2@cache:6379 is away");
      log.warn({ detail: { dsn: "host=db password='sec ret' user=x" } }, "pg said: database \\"host=db password=s3cr3t\\" does not exist");
      log.info({ url: "postgresql://db:5432/x?sslpassword=keypw99&sslmode=require" }, "ok");
    `;
    const r = spawnSync(
      process.execPath,
      ["--import", "tsx", "--input-type=module", "-e", script],
      {
        cwd: REPO_ROOT,
        env: { ...process.env, LOG_LEVEL: "info" },
        encoding: "utf8",
        timeout: 60_000,
      },
    );
    assert.equal(r.status, 0, r.stderr);
    const lines = r.stdout.trim().split("\n");
    assert.equal(lines.length, 3, r.stdout);
    for (const line of lines) JSON.parse(line);
    for (const secret of ["p/ss", "hun@ter2", "sec ret", "s3cr3t", "keypw99"])
      assert.ok(!r.stdout.includes(secret), `${secret} in ${r.stdout}`);
    assert.match(r.stdout, /redis:\/\/\*\*\*@cache:6379\/0/);
    assert.match(r.stdout, /password=\*\*\*/);
  });

  it("refuses a log level pino does not know with a ConfigError, not pino's throw", () => {
    assert.throws(
      () => createLogger("probe", "verbose"),
      (err: unknown) =>
        err instanceof ConfigError &&
        err.message ===
          'log level must be one of fatal, error, warn, info, debug, trace, silent, got "verbose"',
    );
    const saved = process.env.LOG_LEVEL;
    process.env.LOG_LEVEL = "loud";
    try {
      assert.throws(
        () => createLogger("probe"),
        /^ConfigError: LOG_LEVEL must be one of .*, got "loud"$/,
      );
    } finally {
      if (saved === undefined) delete process.env.LOG_LEVEL;
      else process.env.LOG_LEVEL = saved;
    }
    assert.equal(createLogger("probe", "silent").level, "silent");
  });

  it("puts no ids in metric labels", async () => {
    const prefix = uniquePrefix("labels");
    const h = new Harness(testConfig(prefix, t.url), t.db);
    try {
      const p = await h.producer();
      p.record({ spend: 1, userId: "user-that-must-not-leak", apiKey: "sk-hash-must-not-leak" });
      assert.throws(() => p.record({ spend: -1, userId: "rejected-user-must-not-leak" }));
      const text = await h.metrics.registry.metrics();
      assert.doesNotMatch(text, /must-not-leak/);
      await p.close();
    } finally {
      await h.close();
    }
  });
});

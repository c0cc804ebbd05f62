import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import pg from "pg";
import {
  assertRefused,
  BIN,
  cleanEnv,
  configFile,
  goodConfig,
  ROOT,
  run,
  runAsync,
} from "../support/cli.js";
import { createTestDatabase, type TestDatabase } from "../support/db.js";
import { cleanRedis, uniquePrefix } from "../support/redis.js";
import { waitFor } from "../support/wait.js";

/**
 * The operators' commands end to end: migrate, key create, a gateway drained by
 * SIGTERM, status, and the dead-letter list and replay.
 */
describe("haimaker-spend CLI: the operators' commands", () => {
  let t: TestDatabase;
  const prefix = uniquePrefix("cli-operations");
  let config: string;
  before(async () => {
    t = await createTestDatabase("cli_operations");
    config = goodConfig(prefix, t.url);
  });
  after(async () => {
    await cleanRedis(prefix);
    await t.drop();
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
    assert.match(status.stdout, /flush leader: none/);
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

    // PostgreSQL down (nothing listens there) or without its schema: Redis's side is still
    // shown, the rest says why it is missing, and the exit code says it was not all read.
    const nothere = configFile(
      readFileSync(config, "utf8").replace(t.url, "postgresql://postgres:pw@127.0.0.1:1/nope"),
    );
    const down = run(["status", "--config", nothere]);
    assert.equal(down.code, 1, down.stderr);
    assert.match(down.stdout, /backlog: 2 jobs waiting/);
    assert.match(
      down.stdout,
      /last successful flush: unknown \(PostgreSQL at postgresql:\/\/\*\*\*@127\.0\.0\.1:1\/nope is unreachable: .*ECONNREFUSED/,
    );
    assert.ok(!down.stdout.includes(":pw@"), "the password is not shown");
    const downJson = JSON.parse(run(["status", "--config", nothere, "--json"]).stdout) as {
      backlog: { jobs: number };
      postgresUnavailable?: string;
    };
    assert.equal(downJson.backlog.jobs, 2);
    assert.match(downJson.postgresUnavailable ?? "", /is unreachable/);
    const noSchema = run([
      "status",
      "--config",
      configFile(
        readFileSync(config, "utf8").replace(t.url, t.url.replace(/\/[^/]*$/, "/postgres")),
      ),
    ]);
    assert.equal(noSchema.code, 1, noSchema.stderr);
    assert.match(noSchema.stdout, /has no schema: run `haimaker-spend migrate` first/);
  });

  it("dead-letter list shows what the flush set aside; replay applies it once, exit 1 while rows are still refused", async () => {
    const { applyBatches } = await import("../../src/persist/apply-batches.js");
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
      assert.equal(again.code, 0, again.stderr);
      // A mistyped id must not read as done: "gone" is only for one replayed before.
      const typo = await runAsync(["dead-letter", "replay", "--id", "999999", "--config", config]);
      assert.equal(typo.code, 1, typo.stdout);
      assert.match(typo.stdout, /#999999: unknown, no dead letter has this id/);
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
});

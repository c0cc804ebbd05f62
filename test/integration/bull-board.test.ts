import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { chromium, type BrowserContext } from "playwright-core";
import { buildConfig, type AppConfig } from "../../src/config/config.js";
import { startFlushWorker, type FlushWorkerService } from "../../src/index.js";
import { createTestDatabase, type TestDatabase } from "../support/db.js";
import { Harness } from "../support/harness.js";
import { cleanRedis, TEST_REDIS_URL, uniquePrefix } from "../support/redis.js";

/**
 * Bull Board on the flush worker, in a real headless Chromium (Debian's
 * package): the three queues are listed behind basic auth, and nothing is
 * shown without credentials.
 */

const CHROMIUM = process.env.CHROMIUM_PATH ?? "/usr/bin/chromium";
const ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

function boardConfig(
  prefix: string,
  databaseUrl: string,
  settings: Record<string, unknown>,
): AppConfig {
  return buildConfig(
    {
      general_settings: { use_redis_transaction_buffer: true },
      litellm_settings: { cache: true, cache_params: { type: "redis" } },
      // A long interval: the board is looked at, the worker need not flush meanwhile.
      spend_buffer_settings: { key_prefix: prefix, worker_flush_every_seconds: 3_600, ...settings },
    },
    { REDIS_URL: TEST_REDIS_URL, DATABASE_URL: databaseUrl, BOARD_PASSWORD: "s3cret-board-pw" },
  );
}

describe("Bull Board on the flush worker", () => {
  let t: TestDatabase;
  let svc: FlushWorkerService;
  let base: string;
  const prefix = uniquePrefix("board");
  const dirs: string[] = [];

  /** A fresh browser profile each time: nothing cached, no credentials remembered. */
  async function browser(credentials?: {
    username: string;
    password: string;
  }): Promise<BrowserContext> {
    const dir = mkdtempSync(join(tmpdir(), "board-chromium-"));
    dirs.push(dir);
    return chromium.launchPersistentContext(dir, {
      executablePath: CHROMIUM,
      headless: true,
      args: ARGS,
      ...(credentials !== undefined ? { httpCredentials: credentials } : {}),
    });
  }

  before(async () => {
    t = await createTestDatabase("board");
    const config = boardConfig(prefix, t.url, {
      admin_username: "ops",
      admin_password: "os.environ/BOARD_PASSWORD",
      admin_token: "board-token-0123456789",
    });
    // Something to look at: one batch waiting in each spend queue.
    const h = new Harness(config, t.db);
    const p = await h.producer();
    p.record({ spend: "0.5", userId: "u1", model: "m" });
    await p.flush();
    await h.close();
    svc = await startFlushWorker(config, { port: 0, host: "127.0.0.1" });
    base = `http://127.0.0.1:${svc.port}/admin/queues`;
  });
  after(async () => {
    await svc.close();
    await cleanRedis(prefix);
    await t.drop();
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  });

  it("refuses requests without valid credentials (401) and accepts basic auth or the bearer token", async () => {
    const none = await fetch(base);
    assert.equal(none.status, 401);
    assert.match(none.headers.get("www-authenticate") ?? "", /^Basic realm=/);
    const basic = (u: string, p: string): string =>
      `Basic ${Buffer.from(`${u}:${p}`).toString("base64")}`;
    assert.equal(
      (await fetch(base, { headers: { authorization: basic("ops", "wrong") } })).status,
      401,
    );
    assert.equal(
      (await fetch(base, { headers: { authorization: basic("admin", "s3cret-board-pw") } })).status,
      401,
    );
    assert.equal((await fetch(`${base}/api/queues`)).status, 401, "the API behind the page too");
    assert.equal(
      (await fetch(base, { headers: { authorization: basic("ops", "s3cret-board-pw") } })).status,
      200,
    );
    const api = await fetch(`${base}/api/queues`, {
      headers: { authorization: "Bearer board-token-0123456789" },
    });
    assert.equal(api.status, 200);
    const body = (await api.json()) as { queues: { name: string; readOnlyMode: boolean }[] };
    assert.deepEqual(body.queues.map((q) => q.name).sort(), [
      "{daily-spend-update}",
      "{spend-flush}",
      "{spend-update}",
    ]);
    assert.ok(
      body.queues.every((q) => q.readOnlyMode),
      "read-only by default",
    );
  });

  it("shows a job's rows decoded (format 4's facts fanned out), spend in USD, with no raw text", async () => {
    const jobsOf = async (queue: string): Promise<Record<string, unknown>[]> => {
      const res = await fetch(
        `${base}/api/queues?activeQueue=${encodeURIComponent(queue)}&status=latest&page=1&jobsPerPage=10`,
        { headers: { authorization: "Bearer board-token-0123456789" } },
      );
      assert.equal(res.status, 200);
      const body = (await res.json()) as {
        queues: { name: string; jobs: { data: Record<string, unknown> }[] }[];
      };
      return body.queues.find((q) => q.name === queue)?.jobs.map((j) => j.data) ?? [];
    };
    const [daily] = await jobsOf("{daily-spend-update}");
    assert.equal(daily?.v, 4);
    assert.equal(daily.rowCount, 1, "one fact");
    assert.equal(daily.rowText, undefined, "the raw text is replaced by its rows");
    assert.equal(daily.rowsShown, "1 of 1");
    assert.deepEqual(daily.rows, [
      {
        kind: "user",
        entity_id: "u1",
        date: (daily.rows as { date: string }[])[0]?.date,
        api_key: "",
        model: "m",
        model_group: "",
        custom_llm_provider: "",
        mcp_namespaced_tool_name: "",
        endpoint: "",
        prompt_tokens: 0,
        completion_tokens: 0,
        cache_read_input_tokens: 0,
        cache_creation_input_tokens: 0,
        api_requests: 1,
        successful_requests: 1,
        failed_requests: 0,
        spend_usd: "0.500000000000",
      },
    ]);
    const [entity] = await jobsOf("{spend-update}");
    assert.deepEqual(entity?.rows, [{ kind: "user", id: "u1", spend_usd: "0.500000000000" }]);
  });

  it("shows the entity, daily and flush queues in a real browser with credentials", async () => {
    const ctx = await browser({ username: "ops", password: "s3cret-board-pw" });
    try {
      const page = ctx.pages()[0] ?? (await ctx.newPage());
      const res = await page.goto(base);
      assert.equal(res?.status(), 200);
      for (const name of ["{spend-update}", "{daily-spend-update}", "{spend-flush}"]) {
        await page.getByText(name, { exact: true }).first().waitFor({ timeout: 15_000 });
      }
      if (process.env.BOARD_SCREENSHOT !== undefined)
        await page.screenshot({ path: process.env.BOARD_SCREENSHOT, fullPage: true });
    } finally {
      await ctx.close();
    }
  });

  it("gets 401 in a browser without credentials", async () => {
    const ctx = await browser();
    try {
      const page = ctx.pages()[0] ?? (await ctx.newPage());
      // Chromium answers an unanswerable Basic challenge by failing the
      // navigation; the response it got is what matters.
      const response = page.waitForResponse((r) => r.url() === base);
      const nav = await page.goto(base).catch((err: unknown) => err as Error);
      const res = await response;
      assert.equal(res.status(), 401);
      assert.ok(nav === null || nav instanceof Error || nav.status() === 401);
      assert.equal(await page.getByText("{spend-update}").count(), 0);
    } finally {
      await ctx.close();
    }
  });
});

describe("Bull Board authentication settings", () => {
  it("is open only with admin_auth: false, and locked when no credentials are configured", async () => {
    const t = await createTestDatabase("board_auth");
    const open = await startFlushWorker(
      boardConfig(uniquePrefix("board-open"), t.url, { admin_auth: false }),
      {
        port: 0,
        host: "127.0.0.1",
      },
    );
    const locked = await startFlushWorker(boardConfig(uniquePrefix("board-locked"), t.url, {}), {
      port: 0,
      host: "127.0.0.1",
    });
    try {
      assert.equal(
        (await fetch(`http://127.0.0.1:${open.port}/admin/queues/api/queues`)).status,
        200,
      );
      const res = await fetch(`http://127.0.0.1:${locked.port}/admin/queues`, {
        headers: { authorization: "Bearer anything-at-all" },
      });
      assert.equal(res.status, 401);
      assert.match(((await res.json()) as { error: string }).error, /no credentials configured/);
      const ready = await fetch(`http://127.0.0.1:${locked.port}/health/readiness`);
      assert.equal(ready.status, 200);
    } finally {
      await open.close();
      await locked.close();
      await t.drop();
    }
  });
});

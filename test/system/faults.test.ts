import assert from "node:assert/strict";
import { after, afterEach, before, beforeEach, describe, it } from "node:test";
import pg from "pg";
import { trafficGenerator } from "../../src/demo/traffic.js";
import type { FlushStep } from "../../src/flush/flusher.js";
import { diffTotals, readTotals } from "../support/db-totals.js";
import { createTestDatabase, truncateAll, type TestDatabase } from "../support/db.js";
import { Harness } from "../support/harness.js";
import { Ledger } from "../support/ledger.js";
import { spawnTs, type Spawned } from "../support/processes.js";
import { cleanRedis, TEST_REDIS_URL, testConfig, uniquePrefix } from "../support/redis.js";
import { TcpProxy } from "../support/tcp-proxy.js";
import { waitFor } from "../support/wait.js";

/**
 * Fault injection with real processes, real Redis and real PostgreSQL. Every
 * scenario ends the same way: PostgreSQL must equal what was recorded, exactly.
 */
let t: TestDatabase;
let h: Harness;
let prefix: string;
let procs: Spawned[] = [];

const produce = (n: number, seed: number, ledger: Ledger): Promise<void> =>
  h.recordTraffic(n, seed, ledger, { maxRowsPerJob: 200 });

function worker(env: Record<string, string> = {}): Spawned {
  const w = spawnTs("./worker-process.ts", {
    REDIS_URL: TEST_REDIS_URL,
    DATABASE_URL: t.url,
    PREFIX: prefix,
    LEASE_S: "1",
    ...env,
  });
  procs.push(w);
  return w;
}

async function reconcile(ledger: Ledger, what: string): Promise<void> {
  await waitFor(
    `${what}: the pipeline to settle`,
    () => h.settled(),
    30_000,
    100,
    () => h.describe(),
  );
  const diff = diffTotals(ledger.totals, await readTotals(t.url));
  assert.deepEqual(
    diff,
    [],
    `${what}: PostgreSQL differs from what was recorded:\n${diff.join("\n")}`,
  );
}

describe("faults", () => {
  before(async () => {
    t = await createTestDatabase("faults");
  });
  beforeEach(async () => {
    prefix = uniquePrefix("faults");
    h = new Harness(testConfig(prefix, t.url, { lock_lease_seconds: 1 }), t.db);
    await truncateAll(t.db);
  });
  afterEach(async () => {
    for (const p of procs) p.kill("SIGCONT");
    for (const p of procs) p.kill("SIGKILL");
    await Promise.all(procs.map((p) => p.done));
    procs = [];
    await h.close();
    await cleanRedis(prefix);
  });
  after(async () => {
    await t.drop();
  });

  const killPoints: [FlushStep, string][] = [
    ["drained", "after taking its jobs, before its transaction"],
    ["in-transaction", "inside its transaction, before writing"],
    ["before-commit", "after writing, right before COMMIT"],
    ["committed", "right after COMMIT, before its jobs are marked done"],
  ];
  for (const [step, when] of killPoints) {
    it(`a flush worker SIGKILLed ${when} loses nothing and counts nothing twice`, async () => {
      const ledger = new Ledger();
      await produce(1_500, 20, ledger);
      const victim = worker({ FAULT_STEP: step, FAULT_ACTION: "kill", HOLDER: "victim" });
      await victim.waitForEvent((e) => e.event === "fault");
      const { signal } = await victim.done;
      assert.equal(signal, "SIGKILL");

      const survivor = worker({ HOLDER: "survivor" });
      await survivor.waitForEvent((e) => e.event === "flush" && e.outcome === "committed", 20_000);
      await reconcile(ledger, `killed at ${step}`);
    });
  }

  it("a lock holder paused past its lease is fenced off by PostgreSQL when it resumes", async () => {
    const ledger = new Ledger();
    await produce(1_000, 21, ledger);
    // A long idle timeout, so PostgreSQL does not end the paused session: the fence alone must refuse it.
    const paused = worker({
      FAULT_STEP: "in-transaction",
      FAULT_ACTION: "stop",
      HOLDER: "paused",
      IDLE_TX_TIMEOUT_MS: "60000",
    });
    await paused.waitForEvent((e) => e.event === "fault");

    const next = worker({ HOLDER: "next" });
    await next.waitForEvent((e) => e.event === "flush" && e.outcome === "committed", 20_000);
    await waitFor(
      "the takeover to drain everything",
      () => h.settled(),
      20_000,
      100,
      () => h.describe(),
    );

    paused.kill("SIGCONT");
    const verdict = await paused.waitForEvent((e) => e.event === "flush", 20_000);
    assert.equal(
      verdict.outcome,
      "fenced_off",
      `the resumed holder's write was refused (${String(verdict.error)})`,
    );
    await reconcile(ledger, "paused holder");
  });

  it("a holder paused while holding row locks blocks the next one only until PostgreSQL ends its session", async () => {
    const ledger = new Ledger();
    await produce(1_000, 22, ledger);
    const paused = worker({
      FAULT_STEP: "before-commit",
      FAULT_ACTION: "stop",
      HOLDER: "paused",
      IDLE_TX_TIMEOUT_MS: "1500",
    });
    await paused.waitForEvent((e) => e.event === "fault");
    const stoppedAt = Date.now();

    const next = worker({ HOLDER: "next" });
    await next.waitForEvent((e) => e.event === "flush" && e.outcome === "committed", 20_000);
    assert.ok(Date.now() - stoppedAt < 15_000, "the takeover was not blocked for long");

    paused.kill("SIGCONT");
    const verdict = await paused.waitForEvent((e) => e.event === "flush", 20_000);
    assert.notEqual(verdict.outcome, "committed", "the resumed holder could not commit");
    await reconcile(ledger, "paused with locks");
  });

  it("survives PostgreSQL terminating the flush's connection mid-transaction", async () => {
    const ledger = new Ledger();
    await produce(1_000, 23, ledger);
    const admin = new pg.Client({ connectionString: t.url });
    await admin.connect();
    let terminated = 0;
    try {
      const report = await h
        .flusher({
          onStep: async (step) => {
            if (step === "before-commit" && terminated === 0) {
              const r = await admin.query(
                `SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()`,
              );
              terminated = r.rowCount ?? 0;
            }
          },
        })
        .flushOnce();
      assert.ok(terminated > 0, "the flush's backend was terminated");
      assert.equal(report.outcome, "committed", report.error ?? "");
      assert.ok(report.retries >= 1, "the flush retried its transaction on a new connection");
    } finally {
      await admin.end();
    }
    await reconcile(ledger, "connection terminated");
  });

  it("rides out PostgreSQL going away and coming back mid-traffic: nothing lost, nothing doubled", async () => {
    const proxy = await TcpProxy.start("127.0.0.1", Number(new URL(t.url).port || 5432));
    try {
      const ledger = new Ledger();
      const w = worker({ HOLDER: "outage", EVERY_S: "0.1", DATABASE_URL: proxy.urlFor(t.url) });
      await w.waitForEvent((e) => e.event === "ready");
      let exited = false;
      void w.done.then(() => (exited = true));
      const p = await h.producer({ flushIntervalMs: 100, flushJitterMs: 20 });
      const gen = trafficGenerator(25);
      let recording = true;
      const traffic = (async () => {
        while (recording) {
          for (let i = 0; i < 50; i++) {
            const e = gen();
            p.record(e);
            ledger.record(e);
          }
          await new Promise((r) => setTimeout(r, 10));
        }
      })();
      // Five outages of 400 ms, 400 ms apart: some land inside flushes, at whatever step.
      for (let i = 0; i < 5; i++) {
        await new Promise((r) => setTimeout(r, 400));
        proxy.down();
        await new Promise((r) => setTimeout(r, 400));
        proxy.up();
      }
      recording = false;
      await traffic;
      await p.close();
      const upAt = Date.now();
      await waitFor(
        "a committed flush after the last outage",
        () =>
          w.events.some(
            (e) => e.event === "flush" && e.outcome === "committed" && Number(e.at) > upAt,
          ) || h.settled(),
        20_000,
      );
      await reconcile(ledger, "PostgreSQL outages");
      // An outage shorter than the flush's retries is ridden out inside the flush (retried
      // transactions); a longer one fails the flush and its jobs go back. Either proves a hit.
      const flushes = w.events.filter((e) => e.event === "flush");
      const failed = flushes.filter((e) => e.outcome === "failed").length;
      const retried = flushes.reduce((n, e) => n + Number(e.retries ?? 0), 0);
      assert.ok(
        failed + retried > 0,
        "an outage hit a flush: one failed or retried (else this test proves nothing)",
      );
      assert.equal(exited, false, "the worker rode it out without a restart");
    } finally {
      await proxy.close();
    }
  });

  it("with several replicas exactly one flushes at a time, and the next takes over when the holder dies", async () => {
    const ledger = new Ledger();
    const replicas = ["r1", "r2", "r3"].map((name) => worker({ HOLDER: name, EVERY_S: "0.1" }));
    await Promise.all(replicas.map((r) => r.waitForEvent((e) => e.event === "ready")));
    const p = await h.producer({ flushIntervalMs: 100, flushJitterMs: 20 });
    const gen = trafficGenerator(24);
    const traffic = async (ms: number): Promise<void> => {
      const end = Date.now() + ms;
      while (Date.now() < end) {
        for (let i = 0; i < 50; i++) {
          const e = gen();
          p.record(e);
          ledger.record(e);
        }
        await new Promise((r) => setTimeout(r, 10));
      }
    };
    await traffic(3_000);
    await p.flush();
    await waitFor(
      "a committed flush",
      () =>
        replicas.some((r) =>
          r.events.some((e) => e.event === "flush" && e.outcome === "committed"),
        ),
      20_000,
    );

    // Kill whichever replica committed last, while traffic continues.
    const commits = replicas.flatMap((r) =>
      r.events.filter((e) => e.event === "flush" && e.outcome === "committed"),
    );
    const last = commits.sort((a, b) => Number(a.at) - Number(b.at)).at(-1);
    const victim = replicas.find((r) => r.events.includes(last ?? {}));
    assert.ok(victim !== undefined);
    victim.kill("SIGKILL");
    const killedAt = Date.now();
    await traffic(1_500);
    await p.close();
    const others = replicas.filter((r) => r !== victim);
    await waitFor(
      "another replica to commit after the kill",
      () =>
        others.some((r) =>
          r.events.some(
            (e) => e.event === "flush" && e.outcome === "committed" && Number(e.at) > killedAt,
          ),
        ),
      20_000,
    );
    await reconcile(ledger, "replicas");

    // Mutual exclusion: windows in which each replica surely held the lock never overlap.
    const windows = replicas
      .flatMap((r) =>
        r.events
          .filter((e) => e.event === "flush" && e.outcome === "committed")
          .map((e) => ({
            holder: String(e.holder),
            from: Number(e.lockedAt),
            to: Number(e.ackedAt),
          })),
      )
      .sort((a, b) => a.from - b.from);
    assert.ok(windows.length >= 2);
    assert.ok(new Set(windows.map((w) => w.holder)).size >= 2, "more than one replica flushed");
    for (let i = 1; i < windows.length; i++) {
      const a = windows[i - 1];
      const b = windows[i];
      assert.ok(a !== undefined && b !== undefined);
      assert.ok(
        b.from >= a.to,
        `${a.holder} held the lock until ${a.to}, yet ${b.holder} took it at ${b.from}`,
      );
    }
    const fences = replicas.flatMap((r) =>
      r.events
        .filter((e) => e.event === "flush" && e.outcome === "committed")
        .map((e) => BigInt(String(e.fence))),
    );
    assert.equal(
      new Set(fences).size,
      fences.length,
      "every committed flush had its own fencing token",
    );
  });
});

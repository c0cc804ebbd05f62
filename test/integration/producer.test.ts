import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { collectStatus, formatStatus } from "../../src/cli/status.js";
import { trafficGenerator } from "../../src/demo/traffic.js";
import { SpendMetrics } from "../../src/observe/metrics.js";
import { producerMetrics } from "../../src/produce/producer-metrics.js";
import { BufferFullError, CloseTimeoutError, SpendProducer } from "../../src/produce/producer.js";
import { SpendEventError, type SpendEvent } from "../../src/produce/spend-event.js";
import { MAX_JOB_TEXT_BYTES } from "../../src/produce/sealer.js";
import { MAX_ID_LENGTH } from "../../src/contract/ids.js";
import { createRedis, waitUntilReady } from "../../src/redis/connection.js";
import { redisKeys } from "../../src/redis/keys.js";
import { FLUSH_RATE_TTL_MS, pipelineLoad } from "../../src/queue/backlog.js";
import { QueueSink } from "../../src/queue/queue-sink.js";
import { openSpendQueues } from "../../src/queue/spend-queues.js";
import { diffTotals, readTotals } from "../support/db-totals.js";
import { createTestDatabase, truncateAll, type TestDatabase } from "../support/db.js";
import { Harness } from "../support/harness.js";
import { Ledger } from "../support/ledger.js";
import { cleanRedis, testConfig, uniquePrefix } from "../support/redis.js";
import { ManualClock } from "../support/manual-clock.js";
import { isTwoByte } from "../support/strings.js";
import { freePort, TestRedisServer } from "../support/redis-server.js";

/** Waits up to 5 s for a producer's back-pressure state to become `want`. */
async function backlogged(p: SpendProducer, want: boolean, what: string): Promise<void> {
  const deadline = Date.now() + 5_000;
  while (p.backlogged !== want && Date.now() < deadline)
    await new Promise((r) => setTimeout(r, 20));
  assert.equal(p.backlogged, want, what);
}

describe("producer", () => {
  let t: TestDatabase;
  let h: Harness;
  /** Back-pressure episodes by the rule that turned it on, as Prometheus text. */
  const episodes = (): Promise<string> =>
    h.metrics.registry.getSingleMetricAsString("spend_producer_backpressure_episodes_total");
  const prefix = uniquePrefix("producer");
  /** n events of one user, each a new end user: an entity row and a fact apiece. */
  const recordEndUsers = (
    p: SpendProducer,
    ledger: Ledger,
    n: number,
    name: string,
    spend = 0.01,
  ): void => {
    for (let i = 0; i < n; i++) {
      const e: SpendEvent = { spend, userId: `${name}-user`, endUserId: `${name}-${i}` };
      p.record(e);
      ledger.record(e);
    }
  };
  /** One flush commits what was delivered, PostgreSQL equals the ledger; the tables are emptied after. */
  const assertAllCommitted = async (ledger: Ledger): Promise<void> => {
    assert.equal((await h.flusher().flushOnce()).outcome, "committed");
    assert.deepEqual(diffTotals(ledger.totals, await readTotals(t.url)), []);
    await truncateAll(t.db);
  };
  before(async () => {
    t = await createTestDatabase("producer");
    h = new Harness(testConfig(prefix, t.url), t.db);
  });
  after(async () => {
    await h.close();
    await cleanRedis(prefix);
    await t.drop();
  });

  it("close() sends everything buffered before it returns, and nothing is lost", async () => {
    const ledger = new Ledger();
    const p = await h.producer({ maxRowsPerJob: 250 });
    const gen = trafficGenerator(11);
    for (let i = 0; i < 4_000; i++) {
      const e = gen();
      p.record(e);
      ledger.record(e);
    }
    assert.ok(p.bufferedRows > 0);
    assert.equal(await h.waitingJobs(), 0, "nothing leaves before the interval or close()");
    await p.close();
    assert.equal(p.bufferedRows, 0);
    assert.ok((await h.waitingJobs()) > 2, "rows were split into several jobs");
    assert.equal((await h.flusher().flushOnce()).outcome, "committed");
    assert.deepEqual(diffTotals(ledger.totals, await readTotals(t.url)), []);
  });

  it("jobs close at MAX_JOB_TEXT_BYTES: ids at the length limit, some two-byte, reach PostgreSQL exactly", async () => {
    await truncateAll(t.db);
    const ledger = new Ledger();
    const p = await h.producer();
    // 256 units (MAX_ID_LENGTH): 2,000 rows of these are ~600 KB, far past V8's 128 KB threshold.
    const id = (prefix: string, i: number): string =>
      `${prefix}-${i}-`.padEnd(MAX_ID_LENGTH, i % 97 === 0 ? "й" : "f");
    for (let i = 0; i < 2_000; i++) {
      const e: SpendEvent = {
        spend: "0.000123456789",
        apiKey: id("key", i % 7),
        userId: id("user", i % 50),
        endUserId: id("end", i),
        model: "m",
        promptTokens: 5,
      };
      p.record(e);
      ledger.record(e);
    }
    await p.close();
    const jobs = [
      ...(await h.queues.entity.getJobs(["waiting"])),
      ...(await h.queues.daily.getJobs(["waiting"])),
    ];
    const texts = jobs.map((j) => j.data as { rowText: string; rowCount: number });
    // One row's text past the cap at most; a job that turned two-byte part way, twice the cap.
    for (const j of texts) {
      const perUnit = isTwoByte(j.rowText) ? 2 : 1;
      // The row that crossed the cap, with its context's text: two ids of MAX_ID_LENGTH here
      // (key, end user), short dimensions and digits, two bytes a unit at most.
      assert.ok(j.rowText.length * perUnit < perUnit * MAX_JOB_TEXT_BYTES + 8 * MAX_ID_LENGTH);
      assert.ok(j.rowCount < 2_000, "the byte cap closed it, not the row limit");
    }
    assert.ok(texts.some((j) => isTwoByte(j.rowText)) && texts.some((j) => !isTwoByte(j.rowText)));
    assert.equal((await h.flusher().flushOnce()).outcome, "committed");
    assert.deepEqual(diffTotals(ledger.totals, await readTotals(t.url)), []);
    await truncateAll(t.db);
  });

  it("a large seal drains in slices: events recorded meanwhile are in the next seal, exactly once", async () => {
    await truncateAll(t.db);
    const ledger = new Ledger();
    const p = await h.producer();
    const charge = (i: number, tag: string): void => {
      const e: SpendEvent = {
        spend: "0.000001234567",
        apiKey: "slice-key",
        userId: "slice-user",
        teamId: "slice-team",
        endUserId: `slice-${tag}-${i}`,
        model: "m",
        promptTokens: 3,
      };
      p.record(e);
      ledger.record(e);
    };
    // Two rows per event (an end user's entity and daily row): a seal of ~30k rows.
    for (let i = 0; i < 15_000; i++) charge(i, "before");
    const sealing = p.flush();
    // Until the seal has queued its batches, every turn of the event loop is one it gave back.
    let during = 0;
    while (p.undeliveredBatches === 0 && during < 10_000) {
      await new Promise((r) => setImmediate(r));
      if (p.undeliveredBatches === 0) charge(during++, "during");
    }
    assert.ok(during > 0, "events were recorded while the seal was draining");
    await sealing;
    await p.flush();
    await p.close();
    assert.equal(p.bufferedRows, 0);
    assert.equal((await h.flusher().flushOnce()).outcome, "committed");
    assert.deepEqual(diffTotals(ledger.totals, await readTotals(t.url)), []);
    await truncateAll(t.db);
  });

  it("close() during a sliced seal delivers everything: what the seal drains and what came after", async () => {
    await truncateAll(t.db);
    const ledger = new Ledger();
    const p = await h.producer();
    recordEndUsers(p, ledger, 15_000, "close-before", 0.25);
    let sealed = false;
    const sealing = p.flush().then(() => (sealed = true));
    await new Promise((r) => setImmediate(r));
    // One slice in: the seal has more to drain (its full jobs may be on their way already).
    assert.equal(sealed, false, "the seal is still draining");
    recordEndUsers(p, ledger, 100, "close-after", 0.25);
    await p.close();
    await sealing;
    assert.equal(p.bufferedRows, 0);
    assert.equal(p.undeliveredBatches, 0);
    await assertAllCommitted(ledger);
  });

  it("sends a seal's full jobs while the seal still drains, each exactly once, and it all commits", async () => {
    await truncateAll(t.db);
    const ledger = new Ledger();
    const p = await h.producer({ maxRowsPerJob: 500 });
    // What delivery had queued when each job reached Redis: all of the seal's at
    // once would mean the jobs waited for the whole seal, their text with them.
    const queuedAtWrite: number[] = [];
    const ids: string[] = [];
    const write = p.sink.write.bind(p.sink);
    p.sink.write = (b) => {
      queuedAtWrite.push(p.undeliveredBatches);
      ids.push(b.batchId);
      return write(b);
    };
    recordEndUsers(p, ledger, 20_000, "stream");
    await p.flush();
    assert.ok(ids.length >= 80, `20,000 end users' rows and facts in 500-row jobs: ${ids.length}`);
    assert.ok(
      (queuedAtWrite[0] as number) < ids.length / 4,
      `the first job left with ${queuedAtWrite[0]} of ${ids.length} queued`,
    );
    assert.equal(new Set(ids).size, ids.length, "no batch sent twice");
    assert.deepEqual(
      ids,
      [...ids].sort((a, b) => Number(a.split(".").pop()) - Number(b.split(".").pop())),
      "in batch id order",
    );
    assert.equal(p.bufferedRows, 0);
    await p.close();
    await assertAllCommitted(ledger);
  });

  it("stops sending during a seal once a send failed (the timer's backoff retries), then delivers it all once", async () => {
    await truncateAll(t.db);
    const ledger = new Ledger();
    const p = await h.producer({ maxRowsPerJob: 50 });
    const write = p.sink.write.bind(p.sink);
    let attempts = 0;
    // The sink refusing at once (a connection refused), not timing out.
    p.sink.write = () => {
      attempts++;
      return Promise.reject(new Error("sink unreachable"));
    };
    recordEndUsers(p, ledger, 5_000, "down");
    await assert.rejects(p.flush(), /sink unreachable/);
    assert.ok(p.undeliveredBatches > 100, `${p.undeliveredBatches} batches kept`);
    // One from the seal's first full job, one from flush() after the seal.
    assert.ok(attempts <= 2, `${attempts} sends tried for one flush`);
    p.sink.write = write;
    await p.close();
    assert.equal(p.undeliveredBatches, 0);
    await assertAllCommitted(ledger);
  });

  it("seals on its own timer within the interval (jitter shortens it, never lengthens it), a fresh buffer each time", async () => {
    const clock = new ManualClock();
    const p = await h.producer({ clock, flushIntervalMs: 100, flushJitterMs: 20 });
    p.record({ spend: 1, userId: "timer-user" });
    // The earliest the timer may fire: the interval less all the jitter.
    await clock.advance(79);
    assert.ok(p.bufferedRows > 0, "not before the interval less its jitter");
    assert.equal(await h.waitingJobs(), 0);
    await clock.advance(21);
    assert.equal(p.bufferedRows, 0, "sealed and sent by the end of the interval");
    assert.equal(await h.waitingJobs(), 2, "an entity job and a daily job");
    p.record({ spend: 2, userId: "timer-user" });
    await clock.advance(100);
    assert.equal(p.bufferedRows, 0, "the next interval seals what came since");
    assert.equal(await h.waitingJobs(), 4);
    await p.close();
    await h.flusher().flushOnce();
  });

  it("each seal that emits rows is measured: how long it held the event loop, and its rows", async () => {
    const metrics = new SpendMetrics();
    const p = await h.producer({ metrics });
    const seals = async (): Promise<{ count: number; rows: number; seconds: number }> => {
      const rows = (await producerMetrics(metrics).sealRows.get()).values;
      const time = (await producerMetrics(metrics).sealDuration.get()).values;
      const at = (vs: typeof rows, name: string): number =>
        vs.find((v) => v.metricName === name)?.value ?? Number.NaN;
      assert.equal(
        at(time, "spend_producer_seal_duration_seconds_count"),
        at(rows, "spend_producer_seal_rows_count"),
      );
      return {
        count: at(rows, "spend_producer_seal_rows_count"),
        rows: at(rows, "spend_producer_seal_rows_sum"),
        seconds: at(time, "spend_producer_seal_duration_seconds_sum"),
      };
    };
    const gen = trafficGenerator(31);
    for (let i = 0; i < 500; i++) p.record(gen());
    const held = p.bufferedRows;
    assert.ok(held > 100);
    await p.flush();
    const first = await seals();
    assert.equal(first.count, 1);
    assert.equal(first.rows, held, "the seal's rows are the rows it held");
    assert.ok(first.seconds > 0);
    // Nothing recorded since: no seal to measure.
    await p.flush();
    assert.equal((await seals()).count, 1);
    p.record({ spend: 1, userId: "seal-metric-user" });
    await p.flush();
    const second = await seals();
    assert.equal(second.count, 2);
    assert.equal(second.rows - first.rows, 2, "one user row, one daily fact");
    await p.close();
    assert.equal((await h.flusher().flushOnce()).outcome, "committed");
  });

  it("refuses invalid events with their reason and a metric, and keeps the valid ones", async () => {
    const metrics = new SpendMetrics();
    const p = await h.producer({ metrics });
    p.record({ spend: 0.5, userId: "valid-a" });
    assert.throws(
      () => p.record({ spend: Number.NaN, userId: "x" }),
      (e: unknown) => e instanceof SpendEventError && e.reason === "invalid_spend",
    );
    assert.throws(
      () => p.record({ spend: 1, userId: "__proto__" }),
      (e: unknown) => e instanceof SpendEventError && e.reason === "invalid_id",
    );
    // Rows for everything but the end user exist: only the unseen id's
    // content is new, and it is still checked.
    assert.throws(
      () => p.record({ spend: 1, userId: "valid-a", endUserId: "bad\u0000id" }),
      (e: unknown) => e instanceof SpendEventError && e.reason === "invalid_id",
    );
    p.record({ spend: 0.25, userId: "valid-b" });
    await p.close();
    await h.flusher().flushOnce();
    const a = await t.db.userTable.findUnique({ where: { userId: "valid-a" } });
    const b = await t.db.userTable.findUnique({ where: { userId: "valid-b" } });
    assert.equal(a?.spend.toString(), "0.5");
    assert.equal(b?.spend.toString(), "0.25");
    const text = await metrics.registry.getSingleMetricAsString("spend_events_rejected_total");
    assert.match(text, /reason="invalid_spend"\} 1/);
    assert.match(text, /reason="invalid_id"\} 2/);
  });

  it("back-pressure: backlogged while the oldest waiting job is past the limit, not after the flush", async () => {
    await truncateAll(t.db);
    const ledger = new Ledger();
    const quiet = await h.producer();
    const p = await h.producer({ backpressureBacklogAgeMs: 300, backlogCheckEveryMs: 50 });
    const until = (want: boolean, what: string): Promise<void> => backlogged(p, want, what);
    const e = { spend: "0.25", userId: "bp-user", tags: ["bp"] };
    p.record(e);
    ledger.record(e);
    await p.flush();
    assert.equal(p.backlogged, false, "a job younger than the limit is no backlog");
    await until(true, "the waiting job grew older than 300 ms");
    assert.match(
      await h.metrics.registry.getSingleMetricAsString("spend_producer_backpressure"),
      /spend_producer_backpressure 1/,
    );
    assert.match(await episodes(), /reason="backlog_age"\} [1-9]/);
    // Back-pressure is advice to callers: record() still takes everything.
    p.record(e);
    ledger.record(e);
    // Another producer's job counts too: the backlog is the queue's, not this process's.
    quiet.record(e);
    ledger.record(e);
    await quiet.flush();
    assert.equal((await h.flusher().flushOnce()).outcome, "committed");
    await until(false, "the flush emptied the queue");
    await p.close();
    await quiet.close();
    assert.equal((await h.flusher().flushOnce()).outcome, "committed");
    assert.deepEqual(diffTotals(ledger.totals, await readTotals(t.url)), []);
  });

  it("back-pressure: the rows a gateway holds count, weighed against the flush rate the worker published", async () => {
    await truncateAll(t.db);
    const ledger = new Ledger();
    // Reports other producers of this file left are not this test's.
    await h.redis.del(h.keys.heldRows);
    // An age limit no job reaches here: only held rows can make it behind. The
    // producer's clock is the test's: each poll runs when the test says.
    const clock = new ManualClock();
    const p = await h.producer({
      clock,
      backpressureBacklogAgeMs: 60_000,
      backlogCheckEveryMs: 50,
    });
    for (let i = 0; i < 20; i++) {
      const e = { spend: "0.01", userId: `held-${i}`, tags: ["held"] };
      p.record(e);
      ledger.record(e, clock.now());
    }
    await clock.advance(6 * 50);
    assert.equal(p.backlogged, false, "no rate published, and fewer rows than one transaction");
    assert.equal(await h.waitingJobs(), 0);
    // At 0.001 rows/s the flush would need far longer than half an interval (1 h) for
    // these ~40 rows.
    await h.redis.set(h.keys.flushRate, "0.001");
    await clock.advance(50);
    assert.equal(p.backlogged, true, "behind by the rows it holds, at the next poll");
    assert.match(await episodes(), /reason="held_rows"\} [1-9]/);
    // It handed them over at once, and holding nothing it is behind no more.
    await clock.advance(50);
    assert.equal(p.backlogged, false, "rows handed over");
    assert.ok((await h.waitingJobs()) > 0, "the held rows went to the queue on turning behind");
    await p.close();
    await h.redis.del(h.keys.flushRate);
    for (;;) if ((await h.flusher().flushOnce()).outcome !== "committed") break;
    assert.deepEqual(diffTotals(ledger.totals, await readTotals(t.url)), []);
  });

  it("back-pressure: reads how long ago a worker published its rate (the flush is committing), from the rate's lifetime in Redis", async () => {
    await h.redis.del(h.keys.flushRate);
    const read = async (): Promise<number | null> =>
      (await pipelineLoad([h.queues], "freshness", 0, 3_000)).flushRateAgeMs;
    assert.equal(await read(), null, "no rate published");
    // As a worker publishes it, 15 s ago: its lifetime has 15 s less left.
    await h.redis.set(h.keys.flushRate, "5000", "PX", FLUSH_RATE_TTL_MS - 15_000);
    const age = await read();
    assert.ok(age !== null && age >= 15_000 && age < 16_000, `age ${String(age)}`);
    // Set without the lifetime workers give it: nothing to tell its age by.
    await h.redis.set(h.keys.flushRate, "5000");
    assert.equal(await read(), null);
    await h.redis.del(h.keys.flushRate);
  });

  it("back-pressure: before any rate is published, gateways may hold one transaction's rows", async () => {
    await truncateAll(t.db);
    await h.redis.del(h.keys.flushRate, h.keys.heldRows);
    const ledger = new Ledger();
    const clock = new ManualClock();
    const p = await h.producer({
      clock,
      backpressureBacklogAgeMs: 60_000,
      backlogCheckEveryMs: 50,
      heldRowsWithoutRate: 30,
    });
    const record = (i: number): void => {
      const e = { spend: "0.01", userId: `cold-${i}`, tags: ["cold"] };
      p.record(e);
      // The day is the producer's clock's, not the machine's.
      ledger.record(e, clock.now());
    };
    // Each event adds a user row and a daily user row: 10 events hold ~20 rows (under 30).
    for (let i = 0; i < 10; i++) record(i);
    await clock.advance(6 * 50);
    assert.equal(p.backlogged, false, "under one transaction's rows");
    for (let i = 10; i < 30; i++) record(i);
    await clock.advance(50);
    assert.equal(
      p.backlogged,
      true,
      "past one transaction's rows with no rate to weigh them against",
    );
    assert.match(await episodes(), /reason="held_rows_no_rate"\} [1-9]/);
    await clock.advance(50);
    assert.equal(p.backlogged, false, "rows handed over");
    assert.ok((await h.waitingJobs()) > 0, "the held rows went to the queue on turning behind");
    await p.close();
    for (;;) if ((await h.flusher().flushOnce()).outcome !== "committed") break;
    assert.deepEqual(diffTotals(ledger.totals, await readTotals(t.url)), []);
  });

  /** A sink of its own on the harness's keys, the back-pressure keys cleared before and after. */
  async function withSink(fn: (sink: QueueSink) => Promise<void>): Promise<void> {
    const conn = createRedis(h.config.redis, "producer");
    const sink = new QueueSink(openSpendQueues(conn, h.keys));
    try {
      await waitUntilReady(conn);
      await h.redis.del(h.keys.heldRows, h.keys.flushRate);
      await fn(sink);
    } finally {
      await h.redis.del(h.keys.flushRate, h.keys.heldRows);
      await sink.close();
      conn.disconnect();
    }
  }

  it("back-pressure: held rows are summed over every gateway that reported lately", () =>
    withSink(async (sink) => {
      const redis = h.redis;
      assert.equal((await sink.pipelineLoad("a", 10, 400)).heldRows, 10);
      assert.equal((await sink.pipelineLoad("b", 5, 400)).heldRows, 15);
      assert.equal(
        (await sink.pipelineLoad("a", 7, 400)).heldRows,
        12,
        "a's new count replaces its old",
      );
      await new Promise((r) => setTimeout(r, 500));
      // b has not reported within 400 ms: dropped from the sum and from Redis.
      assert.equal((await sink.pipelineLoad("a", 7, 400)).heldRows, 7);
      assert.deepEqual(await redis.hkeys(h.keys.heldRows), ["a"]);
      // The flush rate is each partition's published figure, or unknown.
      await redis.del(h.keys.flushRate);
      assert.equal((await sink.pipelineLoad("a", 7, 400)).flushRowsPerSec, null);
      await redis.set(h.keys.flushRate, "2500");
      assert.equal((await sink.pipelineLoad("a", 7, 400)).flushRowsPerSec, 2500);
    }));

  it("status shows the rows gateways hold and the flush rate back-pressure weighs them against", () =>
    withSink(async (sink) => {
      assert.match(
        formatStatus(await collectStatus(h.config)),
        /held by gateways: none reporting .*; flush rate: none published/,
      );
      await sink.pipelineLoad("a", 3_000, 60_000);
      await sink.pipelineLoad("b", 1_000, 60_000);
      await h.redis.set(h.keys.flushRate, "2000");
      const status = await collectStatus(h.config);
      assert.deepEqual(status.held, { gateways: 2, rows: 4_000, flushRowsPerSec: 2_000 });
      assert.match(
        formatStatus(status),
        /held by gateways: 4000 rows \(2 reporting\); flush rate: 2000 rows\/s, 2\.0 s of work held/,
      );
    }));

  it("recordServed counts and logs the invalid events its batches refuse, and delivers the others exactly", async () => {
    await truncateAll(t.db);
    const metrics = new SpendMetrics();
    const p = await h.producer({ metrics });
    const ledger = new Ledger();
    const gen = trafficGenerator(29);
    // More than one batch, with invalid events among them: none throws, the request was served.
    for (let i = 0; i < 700; i++) {
      if (i % 100 === 7) {
        p.recordServed({ spend: 1, userId: "served-ok", endUserId: "bad\u0000id" });
        p.recordServed({ spend: 1, userId: 42 as unknown as string });
        continue;
      }
      const e = gen();
      p.recordServed(e);
      ledger.record(e);
    }
    p.recordServed({ spend: 5_000, userId: "served-ok" });
    p.recordServed(null as unknown as SpendEvent);
    await p.close();
    assert.equal((await h.flusher().flushOnce()).outcome, "committed");
    assert.deepEqual(diffTotals(ledger.totals, await readTotals(t.url)), []);
    const text = await metrics.registry.getSingleMetricAsString("spend_events_rejected_total");
    assert.match(text, /reason="invalid_id"\} 14/);
    assert.match(text, /reason="invalid_spend"\} 1/);
    assert.match(text, /reason="not_object"\} 1/);
  });

  it("full counts served events still queued for their batch by the rows they add", async () => {
    const p = await h.producer({ maxBufferedRows: 40 });
    // Each adds two rows (the user's entity row and its daily row).
    const serve = (from: number, to: number): void => {
      for (let i = from; i < to; i++) p.recordServed({ spend: 0.01, userId: `full-served-${i}` });
    };
    serve(0, 9);
    // 18 rows: their bound while queued (10 rows each) would already say full.
    assert.equal(p.full, false, "nine events hold 18 of 40 rows");
    serve(9, 20);
    // 40 rows: full, though no batch of them has run yet.
    assert.equal(p.full, true, "twenty events hold 40 of 40 rows");
    await p.close();
    await h.flusher().flushOnce();
  });

  it("is bounded: at the limit it refuses events that would add rows, and says so", async () => {
    const metrics = new SpendMetrics();
    // Point it at a Redis that does not answer, so nothing can leave.
    const dead = createRedis({ host: "127.0.0.1", port: 1, db: 0, tls: false }, "producer");
    const p = new SpendProducer({
      sink: new QueueSink(openSpendQueues(dead, redisKeys(prefix))),
      flushIntervalMs: 3_600_000,
      maxBufferedRows: 100,
      closeTimeoutMs: 300,
      sendTimeoutMs: 100,
      metrics,
    });
    let refused = 0;
    let lastAccepted = -1;
    for (let i = 0; i < 200; i++) {
      try {
        p.record({ spend: 0.01, userId: `bounded-${i}` });
        lastAccepted = i;
      } catch (err) {
        assert.ok(err instanceof BufferFullError);
        refused++;
      }
    }
    assert.ok(refused > 0, "some events were refused");
    assert.ok(p.bufferedRows <= 102, `buffer held ${p.bufferedRows} rows`);
    // An event for a row already buffered still counts: no new memory needed.
    p.record({ spend: 0.01, userId: `bounded-${lastAccepted}` });
    // A request already served is recorded whatever the bound: its cost is incurred.
    assert.equal(p.full, true);
    const held = p.bufferedRows;
    p.recordServed({ spend: 0.01, userId: "served-past-the-bound" });
    assert.ok(p.bufferedRows > held, "recordServed added its rows past the bound");
    assert.match(
      await metrics.registry.getSingleMetricAsString("spend_events_rejected_total"),
      /reason="buffer_full"\} \d+/,
    );
    await assert.rejects(p.close(), CloseTimeoutError);
    assert.match(
      await metrics.registry.getSingleMetricAsString("spend_producer_enqueue_failures_total"),
      /total [1-9]/,
    );
    dead.disconnect();
  });

  it("keeps batches it could not send and delivers them, same ids, once Redis is back", async () => {
    const server = new TestRedisServer(await freePort());
    await server.start();
    const outageDb = await createTestDatabase("producer_outage");
    const config = testConfig(prefix, outageDb.url);
    const cfg = { ...config, redis: { ...config.redis, port: server.port } };
    const metrics = new SpendMetrics();
    const conn = createRedis(cfg.redis, "producer");
    const p = new SpendProducer({
      sink: new QueueSink(openSpendQueues(conn, redisKeys(prefix))),
      flushIntervalMs: 3_600_000,
      // Small jobs: the seal fills many while it drains, slice after slice.
      maxRowsPerJob: 50,
      metrics,
    });
    const ledger = new Ledger();
    const gen = trafficGenerator(12);
    const failures = async (): Promise<number> =>
      Number(
        /_total (\d+)/.exec(
          await metrics.registry.getSingleMetricAsString("spend_producer_enqueue_failures_total"),
        )?.[1] ?? 0,
      );
    try {
      for (let i = 0; i < 3_000; i++) {
        const e = gen();
        p.record(e);
        ledger.record(e);
      }
      await server.stop("SIGKILL"); // Redis crashes before anything was sent
      await assert.rejects(p.flush());
      const undelivered = p.undeliveredBatches;
      assert.ok(undelivered > 20, `${undelivered} batches kept`);
      // Jobs leave while the seal drains, but once a send failed the seal
      // stops trying: the timer's backoff retries, not every slice.
      assert.ok((await failures()) <= 2, `${await failures()} failed sends for one flush`);
      // The gateway keeps serving meanwhile: new events still aggregate.
      for (let i = 0; i < 100; i++) {
        const e = gen();
        p.record(e);
        ledger.record(e);
      }
      await server.start();
      await p.close();
      assert.equal(p.undeliveredBatches, 0);

      const h2 = new Harness(cfg, outageDb.db);
      try {
        assert.equal((await h2.flusher().flushOnce()).outcome, "committed");
        assert.deepEqual(diffTotals(ledger.totals, await readTotals(outageDb.url)), []);
      } finally {
        await h2.close();
      }
      assert.match(
        await metrics.registry.getSingleMetricAsString("spend_producer_enqueue_failures_total"),
        /total [1-9]/,
      );
    } finally {
      conn.disconnect();
      await server.destroy();
      await outageDb.drop();
    }
  });
});

import assert from "node:assert/strict";
import { randomInt } from "node:crypto";
import { after, before, beforeEach, describe, it } from "node:test";
import { applyBatches } from "../../src/persist/apply-batches.js";
import { listDeadLetters, replayDeadLetter } from "../../src/persist/dead-letters.js";
import type { DailyRow, EntityRow } from "../../src/contract/spend-batch.js";
import { encodeDailyRows, encodeEntityRows } from "../../src/contract/row-text.js";
import { DAILY_JOB, ENTITY_JOB } from "../../src/queue/spend-queues.js";
import { diffTotals, readTotals } from "../support/db-totals.js";
import { createTestDatabase, truncateAll, type TestDatabase } from "../support/db.js";
import { Harness } from "../support/harness.js";
import type { Totals } from "../support/ledger.js";
import { cleanRedis, testConfig, uniquePrefix } from "../support/redis.js";
import { addTotals, deadLetterTotals, rowTotals } from "../support/row-totals.js";

/**
 * Spend PostgreSQL cannot store must never stop the flush: the rows it
 * refuses are found and set aside as dead letters, everything else commits,
 * and the dead letters replay once fixed. Jobs are written straight into the
 * queues here, as an older producer or a hand-written job would: today's
 * producers refuse these ids before they reach Redis (hostile-input.test.ts).
 */

let t: TestDatabase;
let h: Harness;
let prefix: string;
let seq = 0;

const TODAY = new Date().toISOString().slice(0, 10);

function entityRows(n: number, tagPrefix: string): EntityRow[] {
  return Array.from({ length: n }, (_, i) => [
    "tag",
    `${tagPrefix}-${i}`,
    "",
    String(1_000_000 + i),
  ]);
}

function dailyRow(id: string, dims: Partial<Record<number, string>> = {}, pico = "250"): DailyRow {
  const r: DailyRow = [
    "user",
    id,
    TODAY,
    "key-hash",
    "gpt-x",
    "gpt-x",
    "openai",
    "",
    "/v1/chat/completions",
    10,
    5,
    0,
    0,
    1,
    1,
    0,
    pico,
  ];
  for (const [i, v] of Object.entries(dims)) r[Number(i)] = v as string;
  return r;
}

/** Random CJK text: incompressible, three UTF-8 bytes a character. */
function cjk(n: number): string {
  return Array.from({ length: n }, () => String.fromCharCode(0x4e00 + randomInt(20_000))).join("");
}

async function addEntityJob(rows: EntityRow[]): Promise<string> {
  const batchId = `test.${++seq}`;
  await h.queues.entity.add(
    ENTITY_JOB,
    { v: 1, batchId, producerId: "test", sealedAt: Date.now(), rows },
    { jobId: batchId },
  );
  return batchId;
}

async function addDailyJob(rows: DailyRow[]): Promise<string> {
  const batchId = `test.${++seq}`;
  await h.queues.daily.add(
    DAILY_JOB,
    { v: 1, batchId, producerId: "test", sealedAt: Date.now(), rows },
    { jobId: batchId },
  );
  return batchId;
}

/** PostgreSQL plus the dead letters hold exactly what was sent. */
async function assertReconciled(sent: Totals): Promise<void> {
  const held = addTotals(await readTotals(t.url), await deadLetterTotals(t.url));
  const diff = diffTotals(sent, held);
  assert.deepEqual(
    diff,
    [],
    `PostgreSQL and the dead letters differ from what was sent:\n${diff.join("\n")}`,
  );
}

describe("dead letters: the flush never wedges on rows PostgreSQL refuses", () => {
  before(async () => {
    t = await createTestDatabase("dead_letter");
  });
  beforeEach(async () => {
    if (h !== undefined) await h.close();
    if (prefix !== undefined) await cleanRedis(prefix);
    prefix = uniquePrefix("dead");
    h = new Harness(testConfig(prefix, t.url), t.db);
    await truncateAll(t.db);
  });
  after(async () => {
    await h.close();
    await cleanRedis(prefix);
    await t.drop();
  });

  it("a lone surrogate next to U+FFFD: the ill-formed row is set aside before PostgreSQL, the rest commits", async () => {
    const bad: EntityRow[] = [
      ["tag", "t\ud800", "", "7000"],
      ["tag", "t\ufffd", "", "9000"],
      ...entityRows(20, "ok"),
    ];
    const other = entityRows(30, "other");
    await addEntityJob(bad);
    await addEntityJob(other);
    const report = await h.flusher().flushOnce();
    assert.equal(report.outcome, "committed");
    assert.equal(report.deadLetters, 1);
    assert.equal(report.deadLetteredRows, 1);
    assert.equal(await h.waitingJobs(), 0);
    const letters = await listDeadLetters(t.db);
    assert.equal(letters.length, 1);
    assert.equal(letters[0]?.reason, "invalid_unicode");
    assert.equal(letters[0]?.rows, 1);
    // The real U+FFFD tag is stored as sent; the surrogate one did not become it.
    const tag = await t.db.tagTable.findUnique({ where: { tagName: "t\ufffd" } });
    assert.equal(tag?.spend.toFixed(12), "0.000000009000");
    await assertReconciled(rowTotals([...bad, ...other], []));
    const metric = await h.metrics.registry.getSingleMetricAsString(
      "spend_dead_lettered_rows_total",
    );
    assert.match(metric, /queue="entity",reason="invalid_unicode"} 1/);
  });

  it("a daily key PostgreSQL cannot index (54000) is isolated to its row; the same job's other rows and every other job commit", async () => {
    const huge = dailyRow("u-huge", { 3: cjk(256), 4: cjk(256), 5: cjk(256), 6: cjk(256) });
    const job1 = [dailyRow("u-a"), huge, dailyRow("u-b"), dailyRow("u-c")];
    const job2 = Array.from({ length: 25 }, (_, i) => dailyRow(`u-${i}`));
    const ent = entityRows(10, "e");
    await addDailyJob(job1);
    await addDailyJob(job2);
    await addEntityJob(ent);
    const report = await h.flusher().flushOnce();
    assert.equal(report.outcome, "committed");
    assert.equal(report.isolations, 1);
    assert.equal(report.deadLetteredRows, 1);
    const [letter] = await listDeadLetters(t.db);
    assert.equal(letter?.reason, "database");
    assert.equal(letter?.sqlState, "54000");
    assert.match(letter?.detail ?? "", /index row size/);
    await assertReconciled(rowTotals(ent, [...job1, ...job2]));
    // The flush goes on: spend sent afterwards commits at once.
    const later = entityRows(5, "later");
    await addEntityJob(later);
    assert.equal((await h.flusher().flushOnce()).outcome, "committed");
    await assertReconciled(rowTotals([...ent, ...later], [...job1, ...job2]));
  });

  it("NUL (22021) and a duplicate key PostgreSQL sees twice are isolated too", async () => {
    const rows: EntityRow[] = [...entityRows(40, "n"), ["tag", "a\u0000b", "", "5"]];
    await addEntityJob(rows);
    const report = await h.flusher().flushOnce();
    assert.equal(report.outcome, "committed");
    const [letter] = await listDeadLetters(t.db);
    assert.equal(letter?.sqlState, "22021");
    await assertReconciled(rowTotals(rows, []));
  });

  it("a NUL in a dimension every row of a flush shares (sent once, as a scalar) sets those rows aside, not the others", async () => {
    // Every row of this job has the same model, so the statement carries it
    // once; PostgreSQL refuses it for all of them, and isolation must still
    // find them row by row while the other job's rows commit.
    const bad = [1, 2, 3].map((i) => dailyRow(`nul-${i}`, { 4: "m\u0000x" }));
    // Another table's rows, so the user table's model column holds one value.
    const good = [1, 2].map((i): DailyRow => {
      const r = dailyRow(`fine-${i}`);
      r[0] = "team";
      return r;
    });
    await addDailyJob(bad);
    await addDailyJob(good);
    const report = await h.flusher().flushOnce();
    assert.equal(report.outcome, "committed");
    assert.equal(report.deadLetteredRows, 3);
    const letters = await listDeadLetters(t.db);
    assert.deepEqual(
      letters.map((l) => [l.kind, l.sqlState, l.rows]),
      [["daily", "22021", 3]],
    );
    await assertReconciled(rowTotals([], [...bad, ...good]));
  });

  it("a job too malformed to read is kept whole as a dead letter and marked failed; the others commit", async () => {
    await h.queues.entity.add(ENTITY_JOB, { v: 1, rows: "nope\u0000" } as never, {
      jobId: "bad.1",
    });
    const ok = entityRows(10, "fine");
    await addEntityJob(ok);
    const report = await h.flusher().flushOnce();
    assert.equal(report.outcome, "committed");
    assert.equal(report.poisonJobs, 1);
    const [letter] = await listDeadLetters(t.db);
    assert.equal(letter?.kind, "job");
    assert.equal(letter?.reason, "malformed");
    const stored = await t.db.spendDeadLetter.findFirstOrThrow();
    assert.deepEqual(JSON.parse(stored.payload), { v: 1, rows: "nope\u0000" });
    assert.equal(await h.queues.entity.getFailedCount(), 1);
    await assertReconciled(rowTotals(ok, []));
  });

  it("format 3: unreadable row text is a dead letter saying where and why; readable text isolates a bad row as format 1 does", async () => {
    const v3 = async (
      kind: "entity" | "daily",
      rowCount: number,
      rowText: string,
    ): Promise<string> => {
      const batchId = `test.${++seq}`;
      const data = {
        v: 3 as const,
        kind,
        batchId,
        producerId: "test",
        sealedAt: Date.now(),
        rowCount,
        rowText,
      };
      if (kind === "entity") await h.queues.entity.add(ENTITY_JOB, data, { jobId: batchId });
      else await h.queues.daily.add(DAILY_JOB, data, { jobId: batchId });
      return batchId;
    };
    const fine = entityRows(40, "v3");
    const text = encodeEntityRows(fine);
    // Cut mid-row, a row count that is not the text's, and a kind no producer writes.
    await v3("entity", 40, text.slice(0, -3));
    await v3("entity", 41, text);
    await v3("entity", 1, "9,1:t0:5,");
    // Daily text read as an entity job's (the wrong queue's kind field is refused too).
    const days = [dailyRow("u-1"), dailyRow("u-2")];
    await v3("daily", 2, encodeDailyRows(days));
    await v3("entity", 2, encodeDailyRows(days));
    // A readable job with a NUL in one id: that row alone is set aside, as in format 1.
    const withNul: EntityRow[] = [["tag", "nul\u0000", "", "7000"], ...entityRows(5, "beside")];
    await v3("entity", withNul.length, encodeEntityRows(withNul));
    await v3("entity", fine.length, text);

    const report = await h.flusher().flushOnce();
    assert.equal(report.outcome, "committed");
    assert.equal(report.poisonJobs, 4);
    const letters = await listDeadLetters(t.db);
    const jobs = letters.filter((l) => l.kind === "job");
    assert.equal(jobs.length, 4);
    const details = jobs.map((l) => l.detail).join("\n");
    assert.match(details, /rowText: row text, at character \d+: spend: text ends early/);
    assert.match(details, /rowCount: says 41 rows, the text holds 40/);
    assert.match(details, /kind: no kind 9/);
    assert.match(details, /kind: expected a number/);
    const rows = letters.filter((l) => l.kind === "entity");
    assert.equal(rows.length, 1);
    assert.equal(rows[0]?.rows, 1);
    await assertReconciled(addTotals(rowTotals([...fine, ...withNul], days), rowTotals([], [])));
    const poison = await h.metrics.registry.getSingleMetricAsString("spend_poison_jobs_total");
    assert.match(poison, /queue="entity"[^}]*} 4/);
  });

  it("replays a dead letter once after the fix, exactly; a second replay finds nothing", async () => {
    await t.db.$executeRawUnsafe(
      `ALTER TABLE "LiteLLM_TagTable" ADD CONSTRAINT no_evil CHECK (tag_name NOT LIKE 'evil%')`,
    );
    const rows: EntityRow[] = [
      ...entityRows(15, "good"),
      ["tag", "evil-1", "", "123456"],
      ["tag", "evil-2", "", "654321"],
    ];
    try {
      await addEntityJob(rows);
      assert.equal((await h.flusher().flushOnce()).outcome, "committed");
      const [letter] = await listDeadLetters(t.db);
      assert.equal(letter?.sqlState, "23514");
      assert.equal(letter?.rows, 2);
      await assertReconciled(rowTotals(rows, []));

      // Still refused: nothing applied, the letter stays as it was.
      const early = await replayDeadLetter(t.db, letter?.id ?? 0n);
      assert.equal(early.outcome, "refused");
      assert.equal(early.remainingRows, 2);

      // The fix lets one through: that one is applied and leaves the letter.
      await t.db.$executeRawUnsafe(`ALTER TABLE "LiteLLM_TagTable" DROP CONSTRAINT no_evil`);
      await t.db.$executeRawUnsafe(
        `ALTER TABLE "LiteLLM_TagTable" ADD CONSTRAINT no_evil CHECK (tag_name <> 'evil-2')`,
      );
      const partial = await replayDeadLetter(t.db, letter?.id ?? 0n);
      assert.deepEqual(
        [partial.outcome, partial.appliedRows, partial.remainingRows],
        ["partial", 1, 1],
      );
      await assertReconciled(rowTotals(rows, []));

      await t.db.$executeRawUnsafe(`ALTER TABLE "LiteLLM_TagTable" DROP CONSTRAINT no_evil`);
      const [first, second] = await Promise.all([
        replayDeadLetter(t.db, letter?.id ?? 0n),
        replayDeadLetter(t.db, letter?.id ?? 0n),
      ]);
      assert.deepEqual(
        [first?.outcome, second?.outcome].sort(),
        ["gone", "replayed"],
        "two concurrent replays apply it once",
      );
      assert.equal((await listDeadLetters(t.db)).length, 0);
      assert.equal((await listDeadLetters(t.db, { all: true })).length, 1);
      await assertReconciled(rowTotals(rows, []));
    } finally {
      await t.db.$executeRawUnsafe(
        `ALTER TABLE "LiteLLM_TagTable" DROP CONSTRAINT IF EXISTS no_evil`,
      );
    }
  });

  it("a failure that is not the rows' fault sets nothing aside: the jobs wait and commit once it is gone", async () => {
    const rows = entityRows(10, "wait");
    await addEntityJob(rows);
    await t.db.$executeRawUnsafe(`ALTER TABLE "LiteLLM_TagTable" RENAME TO "tags_away"`);
    try {
      const report = await h.flusher().flushOnce();
      assert.equal(report.outcome, "failed");
      assert.equal(report.deadLetters, 0);
      assert.equal(await h.waitingJobs(), 1);
    } finally {
      await t.db.$executeRawUnsafe(`ALTER TABLE "tags_away" RENAME TO "LiteLLM_TagTable"`);
    }
    assert.equal((await h.flusher().flushOnce()).outcome, "committed");
    assert.equal((await listDeadLetters(t.db)).length, 0);
    await assertReconciled(rowTotals(rows, []));
  });

  it("isolation is bounded: past its statement budget the still-failing rows are set aside whole, and nothing is lost", async () => {
    const rows: EntityRow[] = [];
    for (let i = 0; i < 64; i++)
      rows.push(["tag", i % 3 === 0 ? `x\u0000${i}` : `fine-${i}`, "", "10"]);
    const result = await t.db.$transaction((tx) =>
      applyBatches(tx, [{ batchId: "budget.1", entity: rows }], {
        isolate: true,
        partition: "test",
        maxIsolationStatements: 8,
      }),
    );
    assert.equal(result.deadLetters.length, 1);
    const setAside = result.deadLetters[0]?.rows ?? 0;
    assert.ok(setAside >= 22 && setAside < 64, `set aside ${setAside} of 64`);
    assert.match(result.deadLetters[0]?.detail ?? "", /isolation budget/);
    await assertReconciled(rowTotals(rows, []));
  });
});

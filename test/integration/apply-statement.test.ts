import assert from "node:assert/strict";
import { after, before, beforeEach, describe, it } from "node:test";
import {
  applyBatches,
  FencedOffError,
  type ApplyResult,
  type BatchToApply,
  type Fence,
} from "../../src/persist/apply-batches.js";
import { mergeRows } from "../../src/persist/merge.js";
import { premerge } from "../../src/persist/premerge.js";
import type { Tx } from "../../src/persist/prisma.js";
import { createTestDatabase, truncateAll, type TestDatabase } from "../support/db.js";
import { userDailyRow, userEntityRow } from "../support/spend-rows.js";
import type { DailyRow } from "../../src/contract/spend-batch.js";

/**
 * A flush transaction whose rows were merged ahead is one statement (fence,
 * batch ids, rows): these check it writes exactly what the separate
 * statements did, in every case where it must write less.
 */

let t: TestDatabase;

/** A batch charging each user `pico` picodollars, on both tables. */
const batch = (batchId: string, users: readonly string[], pico: string): BatchToApply => ({
  batchId,
  entity: users.map((u) => userEntityRow(u, pico)),
  daily: users.map((u) => userDailyRow(u, pico)),
});

const fence = (token: bigint, holder = "holder-a"): Fence => ({ partition: "p0", token, holder });

/** Applies `batches` as the flush does (merged ahead), counting the statements sent. */
async function applyPremerged(
  batches: readonly BatchToApply[],
  f: Fence,
): Promise<{ result: ApplyResult; statements: number; idleTimeout: string }> {
  let statements = 0;
  const premerged = premerge(
    batches,
    mergeRows(
      batches.map((b) => b.entity ?? []),
      batches.map((b) => b.daily ?? []),
    ),
  );
  return t.db.$transaction(async (tx) => {
    const counting = new Proxy(tx, {
      get(target, prop, receiver) {
        const v: unknown = Reflect.get(target, prop, receiver);
        if ((prop === "$queryRawUnsafe" || prop === "$executeRawUnsafe") && typeof v === "function")
          return (...args: unknown[]) => {
            statements++;
            return (v as (...a: unknown[]) => unknown).apply(target, args);
          };
        return v;
      },
    }) as Tx;
    const result = await applyBatches(counting, batches, {
      fence: f,
      premerged,
      idleInTransactionTimeoutMs: 4321,
    });
    const shown = await tx.$queryRawUnsafe<{ v: string }[]>(
      "SELECT current_setting('idle_in_transaction_session_timeout') AS v",
    );
    return { result, statements, idleTimeout: shown[0]?.v ?? "" };
  });
}

/** Each user's spend in USD text, on the entity and daily tables. */
async function spend(): Promise<Record<string, [string, string]>> {
  const rows = await t.db.$queryRawUnsafe<{ user_id: string; e: string; d: string }[]>(
    `SELECT u.user_id, u.spend::text AS e, d.spend::text AS d
     FROM "LiteLLM_UserTable" u JOIN "LiteLLM_DailyUserSpend" d USING (user_id) ORDER BY 1`,
  );
  return Object.fromEntries(rows.map((r) => [r.user_id, [r.e, r.d]]));
}

async function recordedBatches(): Promise<string[]> {
  const rows = await t.db.$queryRawUnsafe<{ batch_id: string; fence: string }[]>(
    "SELECT batch_id, fence::text AS fence FROM spend_applied_batch ORDER BY 1",
  );
  return rows.map((r) => `${r.batch_id}@${r.fence}`);
}

describe("a flush transaction in one statement", () => {
  before(async () => {
    t = await createTestDatabase("apply_statement");
  });
  beforeEach(async () => {
    await truncateAll(t.db);
  });
  after(async () => {
    await t.drop();
  });

  it("writes fence, batch ids and rows in one statement, and sets the session's idle timeout", async () => {
    const { result, statements, idleTimeout } = await applyPremerged(
      [batch("a", ["u1", "u2"], "1000000000000"), batch("b", ["u2"], "500000000000")],
      fence(7n),
    );
    assert.equal(statements, 1);
    assert.equal(idleTimeout, "4321ms");
    assert.deepEqual(result.applied, ["a", "b"]);
    assert.deepEqual(result.duplicates, []);
    assert.deepEqual(await spend(), {
      u1: ["1.000000000000", "1.000000000000"],
      u2: ["1.500000000000", "1.500000000000"],
    });
    assert.deepEqual(await recordedBatches(), ["a@7", "b@7"]);
  });

  it("a batch applied before: the rows merged ahead are not written, the fresh batch's are, once", async () => {
    await applyPremerged([batch("a", ["u1"], "1000000000000")], fence(1n));
    const { result, statements } = await applyPremerged(
      [batch("a", ["u1"], "1000000000000"), batch("b", ["u1", "u2"], "250000000000")],
      fence(2n),
    );
    assert.deepEqual(result.applied, ["b"]);
    assert.deepEqual(result.duplicates, ["a"]);
    assert.ok(statements > 1, "the fresh batch's rows are merged again and written on their own");
    assert.deepEqual(await spend(), {
      u1: ["1.250000000000", "1.250000000000"],
      u2: ["0.250000000000", "0.250000000000"],
    });
  });

  it("a column holding one value in every row is written to every row, the others row by row", async () => {
    // The statement sends such a column once, as a scalar (upsert.ts): one
    // constant column, all but the first, the first, and a single row.
    const row = (user: string, model: string, prompt: number, pico: string): DailyRow => {
      const r = userDailyRow(user, pico);
      r[4] = model;
      r[9] = prompt;
      return r;
    };
    const cases: DailyRow[][] = [
      [row("u1", "m1", 5, "7"), row("u2", "m1", 6, "7"), row("u3", "m2", 5, "9")],
      [row("u1", "m1", 5, "7"), row("u2", "m1", 5, "7"), row("u3", "m1", 5, "7")],
      [row("u1", "m1", 5, "7"), row("u1", "m2", 5, "8"), row("u1", "m3", 6, "7")],
      [row("u1", "m1", 5, "7")],
    ];
    let token = 10n;
    for (const rows of cases) {
      await truncateAll(t.db);
      const b: BatchToApply = { batchId: `c${token}`, daily: rows };
      const premerged = premerge([b], mergeRows([], [rows]));
      await t.db.$transaction((tx) => applyBatches(tx, [b], { fence: fence(++token), premerged }));
      const got = await t.db.$queryRawUnsafe<{ r: string }[]>(
        `SELECT concat_ws('|', user_id, date, api_key, model, endpoint, prompt_tokens,
           completion_tokens, failed_requests, spend * 1000000000000) AS r
         FROM "LiteLLM_DailyUserSpend" ORDER BY user_id, model`,
      );
      assert.deepEqual(
        got.map((g) => g.r),
        rows.map((r) =>
          [r[1], r[2], r[3], r[4], r[8], r[9], r[10], r[15], `${r[16]}.000000000000`].join("|"),
        ),
        JSON.stringify(rows.map((r) => [r[1], r[4], r[9], r[16]])),
      );
    }
  });

  it("the same batch twice in one call is applied once", async () => {
    const { result } = await applyPremerged(
      [batch("a", ["u1"], "1000000000000"), batch("a", ["u1"], "1000000000000")],
      fence(3n),
    );
    assert.deepEqual(result.applied, ["a"]);
    assert.deepEqual(result.duplicates, ["a"]);
    assert.deepEqual(await spend(), { u1: ["1.000000000000", "1.000000000000"] });
  });

  it("batch ids array_in would misread bare are recorded exactly, and recognised when sent again", async () => {
    const ids = ["a,b", "{x}", '"q"', "back\\slash", "NULL", "sp ace", "\\u0000 escaped"];
    const batches = ids.map((id, i) => batch(id, [`u${i}`], "1000000000000"));
    const first = await applyPremerged(batches, fence(4n));
    assert.deepEqual(first.result.applied, ids);
    assert.deepEqual((await recordedBatches()).sort(), ids.map((id) => `${id}@4`).sort());
    const again = await applyPremerged(batches, fence(5n));
    assert.deepEqual(again.result.duplicates, ids);
    assert.deepEqual(again.result.applied, []);
    assert.equal(Object.keys(await spend()).length, ids.length);
    for (const [e, d] of Object.values(await spend())) {
      assert.equal(e, "1.000000000000");
      assert.equal(d, "1.000000000000");
    }
  });

  it("an older fencing token writes nothing and is refused with the newer one", async () => {
    await applyPremerged([batch("a", ["u1"], "1000000000000")], fence(9n));
    await assert.rejects(
      applyPremerged([batch("b", ["u2"], "1000000000000")], fence(8n, "holder-b")),
      (err: unknown) => err instanceof FencedOffError && err.committed === 9n && err.token === 8n,
    );
    assert.deepEqual(await spend(), { u1: ["1.000000000000", "1.000000000000"] });
    assert.deepEqual(await recordedBatches(), ["a@9"]);
  });

  it("an equal token passes only for the holder that recorded it", async () => {
    await applyPremerged([batch("a", ["u1"], "1000000000000")], fence(5n, "holder-a"));
    await applyPremerged([batch("b", ["u1"], "1000000000000")], fence(5n, "holder-a"));
    await assert.rejects(
      applyPremerged([batch("c", ["u1"], "1000000000000")], fence(5n, "holder-b")),
      FencedOffError,
    );
    assert.deepEqual(await spend(), { u1: ["2.000000000000", "2.000000000000"] });
  });
});

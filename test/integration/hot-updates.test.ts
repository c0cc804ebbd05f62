import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import type { DailyRow, EntityRow } from "../../src/contract/spend-batch.js";
import { applyBatches, type BatchToApply } from "../../src/persist/apply-batches.js";
import { createTestDatabase, type TestDatabase } from "../support/db.js";
import { userDailyRow, userEntityRow } from "../support/spend-rows.js";

/**
 * The spend tables leave room on each page (migration 20261209000000_hot_updates)
 * so that a flush updating rows it wrote before updates them in place: the
 * new version stays on the row's page and no index gains an entry. Packed
 * full, every such update moved the row to another page.
 */

let t: TestDatabase;
const ROWS = 2_000;
const EVERY = 8; // a flush updates a share of the rows on a page, not all of them

const userId = (i: number): string => `user-${String(i).padStart(5, "0")}`;
const daily = (i: number): DailyRow => userDailyRow(userId(i), "1500000000");
const entity = (i: number): EntityRow => userEntityRow(userId(i), "1500000000");

async function apply(batchId: string, ids: readonly number[]): Promise<void> {
  const batch: BatchToApply = { batchId, daily: ids.map(daily), entity: ids.map(entity) };
  await t.db.$transaction((tx) => applyBatches(tx, [batch]));
}

/** Each row's heap page, by its id. */
async function pages(table: string, column: string): Promise<Map<string, number>> {
  const rows = await t.db.$queryRawUnsafe<{ id: string; page: number }[]>(
    `SELECT ${column} AS id, (ctid::text::point)[0]::int AS page FROM "${table}"`,
  );
  return new Map(rows.map((r) => [r.id, r.page]));
}

describe("HOT updates of spend rows", () => {
  before(async () => {
    t = await createTestDatabase("hot");
  });
  after(async () => {
    await t.drop();
  });

  it("a flush updating rows written before keeps each on its page", async () => {
    const all = Array.from({ length: ROWS }, (_, i) => i);
    await apply("insert", all);
    const some = all.filter((i) => i % EVERY === 0);
    for (const [table, column] of [
      ["LiteLLM_DailyUserSpend", "user_id"],
      ["LiteLLM_UserTable", "user_id"],
    ] as const) {
      const before = await pages(table, column);
      assert.ok(new Set(before.values()).size > 5, `${table} spans several pages`);
      await apply(`update-${table}`, some);
      const afterUpdate = await pages(table, column);
      const moved = some.map(userId).filter((id) => afterUpdate.get(id) !== before.get(id));
      assert.deepEqual(moved, [], `${table}: rows that left their page on update`);
    }
    // Both updates counted: rows updated twice (once per table's round) hold three times the spend.
    const spend = await t.db.$queryRawUnsafe<{ n: number }[]>(
      `SELECT count(*)::int AS n FROM "LiteLLM_DailyUserSpend" WHERE spend = 0.0045 AND api_requests = 3`,
    );
    assert.equal(spend[0]?.n, some.length);
  });
});

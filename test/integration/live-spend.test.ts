import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { usdStringToPico } from "../../src/contract/money.js";
import { liveSpend, type LiveSpend } from "../../src/gateway/live-spend.js";
import type { SpendProducer } from "../../src/produce/producer.js";
import type { EntityKind } from "../../src/contract/spend-batch.js";
import { createTestDatabase, type TestDatabase } from "../support/db.js";
import { Harness } from "../support/harness.js";
import { cleanRedis, testConfig, uniquePrefix } from "../support/redis.js";

const pico = (usd: string): bigint => usdStringToPico(usd);

describe("live spend", () => {
  let t: TestDatabase;
  let h: Harness;
  const prefix = uniquePrefix("live");
  before(async () => {
    t = await createTestDatabase("live_spend");
    h = new Harness(testConfig(prefix, t.url), t.db);
  });
  after(async () => {
    await h.close();
    await cleanRedis(prefix);
    await t.drop();
  });

  const read = (p: SpendProducer, kind: EntityKind, id: string, id2?: string): Promise<LiveSpend> =>
    liveSpend({ db: t.db, queues: h.queues, producer: p }, kind, id, id2);

  it("counts spend once wherever it is: local, in Redis, committed", async () => {
    const p = await h.producer({ maxRowsPerJob: 2 });
    p.record({ spend: "1.25", apiKey: "k1", userId: "u1", teamId: "t1", tags: ["a", "b"] });
    p.record({ spend: "0.000000000001", apiKey: "k2", userId: "u1", teamId: "t2", tags: ["a"] });
    p.record({ spend: "3", apiKey: "k3", userId: "u2", teamId: "t1" });
    const u1 = pico("1.250000000001");

    // All local.
    let s = await read(p, "user", "u1");
    assert.deepEqual(
      [s.committedPico, s.pendingRedisPico, s.pendingLocalPico, s.totalPico],
      [0n, 0n, u1, u1],
    );
    assert.ok(s.asOf instanceof Date);
    assert.equal((await read(p, "tag", "a")).totalPico, u1);
    assert.equal((await read(p, "team", "t1")).totalPico, pico("4.25"));
    assert.equal((await read(p, "team_member", "u1", "t1")).totalPico, pico("1.25"));
    assert.equal((await read(p, "team_member", "u1")).totalPico, u1, "every team of u1");
    assert.equal((await read(p, "key", "nobody")).totalPico, 0n);

    // All in Redis (jobs of 2 rows: the user's row is in one of several jobs).
    await p.flush();
    s = await read(p, "user", "u1");
    assert.deepEqual(
      [s.committedPico, s.pendingRedisPico, s.pendingLocalPico, s.totalPico],
      [0n, u1, 0n, u1],
    );
    assert.equal(
      (await read(p, "team_member", "u1", "t2")).pendingRedisPico,
      pico("0.000000000001"),
    );

    // All committed.
    assert.equal((await h.flusher().flushOnce()).outcome, "committed");
    s = await read(p, "user", "u1");
    assert.deepEqual(
      [s.committedPico, s.pendingRedisPico, s.pendingLocalPico, s.totalPico],
      [u1, 0n, 0n, u1],
    );

    // Mixed: committed + Redis + local, then everything flushed.
    p.record({ spend: "2", userId: "u1" });
    await p.flush();
    p.record({ spend: "0.5", userId: "u1" });
    s = await read(p, "user", "u1");
    assert.deepEqual(
      [s.committedPico, s.pendingRedisPico, s.pendingLocalPico],
      [u1, pico("2"), pico("0.5")],
    );
    const expected = u1 + pico("2.5");
    assert.equal(s.totalPico, expected);

    await p.flush();
    assert.equal((await h.flusher().flushOnce()).outcome, "committed");
    s = await read(p, "user", "u1");
    assert.deepEqual([s.committedPico, s.totalPico], [expected, expected]);
    // Without a producer or queues it is just what PostgreSQL holds.
    assert.equal((await liveSpend({ db: t.db }, "user", "u1")).totalPico, expected);
    await p.close();
  });

  it("counts a job committed but not yet acked once", async () => {
    const p = await h.producer();
    p.record({ spend: "7", userId: "u-ack", tags: ["ack"] });
    await p.flush();
    let during: LiveSpend | undefined;
    let active = 0;
    const report = await h
      .flusher({
        onStep: async (step) => {
          if (step !== "committed") return;
          active = await h.queues.entity.getActiveCount();
          during = await read(p, "user", "u-ack");
        },
      })
      .flushOnce();
    assert.equal(report.outcome, "committed");
    assert.ok(active > 0, "the job is still active (not acked) at the committed step");
    assert.ok(during !== undefined);
    assert.deepEqual(
      [during.committedPico, during.pendingRedisPico, during.pendingLocalPico, during.totalPico],
      [pico("7"), 0n, 0n, pico("7")],
    );
    await p.close();
  });

  it("counts a batch sealed while it reads once", async () => {
    const p = await h.producer();
    p.record({ spend: "4", userId: "u-seal" });
    // The read takes its local snapshot, then the producer seals and delivers
    // before the read lists Redis: the job is skipped there.
    const entity = h.queues.entity;
    const racing = {
      entity: Object.assign(Object.create(entity) as typeof entity, {
        getRanges: async (...args: Parameters<typeof entity.getRanges>) => {
          await p.flush();
          return entity.getRanges(...args);
        },
      }),
    };
    const s = await liveSpend({ db: t.db, queues: racing, producer: p }, "user", "u-seal");
    assert.equal(await h.queues.entity.getWaitingCount(), 1, "delivered during the read");
    assert.equal(s.totalPico, pico("4"));
    assert.equal((await read(p, "user", "u-seal")).pendingRedisPico, pico("4"));
    await p.close();
  });

  it("refuses an unknown kind", async () => {
    await assert.rejects(liveSpend({ db: t.db }, "planet" as EntityKind, "x"), TypeError);
  });
});

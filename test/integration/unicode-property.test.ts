import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import fc from "fast-check";
import { listDeadLetters } from "../../src/persist/dead-letters.js";
import { SpendEventError, type SpendEvent } from "../../src/produce/spend-event.js";
import type { EntityRow } from "../../src/contract/spend-batch.js";
import { ENTITY_JOB } from "../../src/queue/spend-queues.js";
import { diffTotals, readTotals } from "../support/db-totals.js";
import { createTestDatabase, truncateAll, type TestDatabase } from "../support/db.js";
import { Harness } from "../support/harness.js";
import { Ledger } from "../support/ledger.js";
import { cleanRedis, testConfig, uniquePrefix } from "../support/redis.js";
import { addTotals, deadLetterTotals, rowTotals } from "../support/row-totals.js";

/**
 * Arbitrary strings, end to end through the real Redis and PostgreSQL:
 * whatever the producer accepts is stored exactly and never set aside; and
 * whatever a hand-written job carries is, between PostgreSQL and the dead
 * letters, all there, with the flush committing every time.
 */

/** One UTF-16 code unit or character of the kinds that break storage: mixed, so they meet in one string. */
const unit: fc.Arbitrary<string> = fc.oneof(
  { weight: 6, arbitrary: fc.string({ unit: "binary-ascii", minLength: 1, maxLength: 1 }) },
  { weight: 4, arbitrary: fc.string({ unit: "binary", minLength: 1, maxLength: 1 }) },
  // Lone surrogates, either half.
  {
    weight: 1,
    arbitrary: fc.integer({ min: 0xd800, max: 0xdfff }).map((c) => String.fromCharCode(c)),
  },
  // C0, DEL, C1, separators, bidi controls, noncharacters, U+FFFD.
  {
    weight: 1,
    arbitrary: fc.constantFrom(
      "\u0000",
      "\u0009",
      "\u001f",
      "\u007f",
      "\u0085",
      "\u009f",
      "\u2028",
      "\u2029",
      "\u202e",
      "\u2066",
      "\ufeff",
      "\ufffd",
      "\ufffe",
      "\uffff",
    ),
  },
  // A combining mark (non-NFC after a base letter) and incompressible three-byte characters.
  { weight: 2, arbitrary: fc.constantFrom("e\u0301", "\u0301", "\u00e9", "\u1e9b\u0323") },
  {
    weight: 3,
    arbitrary: fc.integer({ min: 0x4e00, max: 0x9fff }).map((c) => String.fromCharCode(c)),
  },
);

/** Characters every rule accepts: printable ASCII, precomposed Latin, CJK, astral (emoji). */
const clean: fc.Arbitrary<string> = fc.oneof(
  fc.integer({ min: 0x20, max: 0x7e }).map((c) => String.fromCharCode(c)),
  fc.constantFrom("\u00e9", "\u00fc", "\u00df", "\u{1f600}", "\u{1f9ea}", "\u{20000}"),
  fc.integer({ min: 0x4e00, max: 0x9fff }).map((c) => String.fromCharCode(c)),
);

/**
 * Ids from one character to past every bound (256 characters, 2,560 bytes of
 * daily key): mostly clean, so many events are accepted, and hostile often
 * enough that every rule is met.
 */
const id = fc.oneof(
  { weight: 14, arbitrary: fc.string({ unit: clean, minLength: 1, maxLength: 24 }) },
  { weight: 2, arbitrary: fc.string({ unit, minLength: 1, maxLength: 24 }) },
  { weight: 1, arbitrary: fc.string({ unit: clean, minLength: 200, maxLength: 260 }) },
  { weight: 1, arbitrary: fc.string({ unit, minLength: 200, maxLength: 300 }) },
);

const event: fc.Arbitrary<SpendEvent> = fc.record(
  {
    spend: fc
      .bigInt({ min: 0n, max: 10n ** 15n })
      .map((p) => `${p / 10n ** 12n}.${String(p % 10n ** 12n).padStart(12, "0")}`),
    userId: id,
    teamId: id,
    endUserId: id,
    tags: fc.array(id, { maxLength: 3 }),
    model: id,
    modelGroup: id,
    provider: id,
    promptTokens: fc.nat({ max: 1_000_000 }),
  },
  { requiredKeys: ["spend"] },
);

describe("arbitrary strings end to end (fast-check)", () => {
  let t: TestDatabase;
  let h: Harness;
  let prefix: string;

  before(async () => {
    t = await createTestDatabase("unicode_property");
  });
  after(async () => {
    await h.close();
    await cleanRedis(prefix);
    await t.drop();
  });

  /** A clean database and prefix for each run of a property. */
  const fresh = async (): Promise<void> => {
    if (h !== undefined) await h.close();
    if (prefix !== undefined) await cleanRedis(prefix);
    prefix = uniquePrefix("unicode");
    h = new Harness(testConfig(prefix, t.url), t.db);
    await truncateAll(t.db);
  };

  const flushAll = async (): Promise<void> => {
    for (let i = 0; i < 20 && (await h.waitingJobs()) > 0; i++) {
      const r = await h.flusher().flushOnce();
      assert.equal(r.outcome, "committed", r.error ?? "");
    }
    assert.equal(await h.waitingJobs(), 0);
  };

  it("whatever the producer accepts is stored exactly and never set aside; what it refuses has a reason", async () => {
    let accepted = 0;
    let refused = 0;
    await fc.assert(
      fc.asyncProperty(fc.array(event, { minLength: 1, maxLength: 40 }), async (events) => {
        await fresh();
        const ledger = new Ledger();
        const p = await h.producer();
        for (const e of events) {
          try {
            p.record(e);
          } catch (err) {
            assert.ok(err instanceof SpendEventError, String(err));
            refused++;
            continue;
          }
          ledger.record(e);
          accepted++;
        }
        await p.close();
        await flushAll();
        assert.deepEqual(await listDeadLetters(t.db), [], "accepted spend is never set aside");
        const diff = diffTotals(ledger.totals, await readTotals(t.url));
        assert.deepEqual(diff, [], diff.join("\n"));
      }),
      { numRuns: 25 },
    );
    // The generator must exercise both sides, or the property proves little.
    assert.ok(accepted >= 20 && refused >= 20, `accepted ${accepted}, refused ${refused}`);
  });

  it("whatever a hand-written job carries ends up in PostgreSQL or a dead letter, and the flush commits", async () => {
    let setAside = 0;
    await fc.assert(
      fc.asyncProperty(
        fc.array(
          fc.array(
            fc
              .tuple(id, fc.bigInt({ min: 0n, max: 10n ** 12n }))
              .map(([tag, pico]): EntityRow => ["tag", tag, "", pico.toString()]),
            { minLength: 1, maxLength: 30 },
          ),
          { minLength: 1, maxLength: 4 },
        ),
        async (jobs) => {
          await fresh();
          let n = 0;
          for (const rows of jobs) {
            const batchId = `prop.${++n}`;
            await h.queues.entity.add(
              ENTITY_JOB,
              { v: 1, batchId, producerId: "prop", sealedAt: Date.now(), rows },
              { jobId: batchId },
            );
          }
          await flushAll();
          setAside += (await listDeadLetters(t.db)).length;
          const held = addTotals(await readTotals(t.url), await deadLetterTotals(t.url));
          const diff = diffTotals(rowTotals(jobs.flat(), []), held);
          assert.deepEqual(diff, [], diff.join("\n"));
        },
      ),
      { numRuns: 25 },
    );
    assert.ok(setAside > 5, `${setAside} dead letters`);
  });
});

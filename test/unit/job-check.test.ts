import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import { checkDailyJob, checkEntityJob } from "../../src/contract/job-check.js";
import { encodeDailyRows, encodeEntityRows, RowTextWriter } from "../../src/contract/row-text.js";
import {
  DAILY_KINDS,
  dailyJobPayloadSchema,
  ENTITY_KINDS,
  entityJobSchema,
  type DailyRow,
  type EntityRow,
} from "../../src/contract/spend-batch.js";

/**
 * The flush's hand-written job checks accept exactly what the zod schemas
 * (the contract) accept, and read the same thing out of it: on valid jobs,
 * and on valid jobs with one value anywhere in them replaced by something
 * plausible and wrong (the mistakes a hand-written or older producer makes).
 */

/** Values a field may hold instead of the right one. */
const wrong = fc.oneof(
  fc.constantFrom(
    null,
    undefined,
    true,
    -1,
    -0,
    1.5,
    Number.NaN,
    Number.POSITIVE_INFINITY,
    2 ** 53,
    Number.MAX_SAFE_INTEGER,
    0,
    1025,
    "",
    "x",
    "12",
    "-1",
    "1.5",
    " 1",
    "1".repeat(38),
    "1".repeat(39),
    "2026-1-01",
    "2026-12-02",
    "2026-12-02x",
    "a".repeat(1024),
    "a".repeat(1025),
    "a b",
    "é",
    "key",
    "user",
    "team_member",
    "tag",
    "__proto__",
    [],
    {},
    [1, 2],
  ),
  fc.string({ maxLength: 6 }),
  fc.integer(),
);

const count = fc.oneof(fc.nat(), fc.bigInt({ min: 0n, max: 10n ** 30n }).map(String));
const spend = fc.bigInt({ min: 0n, max: 10n ** 37n }).map(String);
const ident = fc.string({ maxLength: 12 });
const date = fc.constantFrom("2026-12-02", "2025-01-31");
const header = {
  batchId: fc.stringMatching(/^[\x21-\x7e]{1,40}$/),
  producerId: fc.string({ maxLength: 40 }),
  sealedAt: fc.nat(),
};

const entityJob = fc.record(
  {
    v: fc.constant(1),
    ...header,
    partitions: fc.integer({ min: 1, max: 1024 }),
    rows: fc.array(
      fc.tuple(
        fc.constantFrom(...ENTITY_KINDS),
        ident.filter((s) => s.length > 0),
        ident,
        spend,
      ),
      { maxLength: 6 },
    ),
  },
  { requiredKeys: ["v", "batchId", "producerId", "sealedAt", "rows"] },
);

const ctx = fc.tuple(date, ident, ident, ident, ident, ident, ident);
const counts = fc.tuple(count, count, count, count, count, count, count, spend);
const dailyKindId = fc.tuple(
  fc.constantFrom(...DAILY_KINDS),
  ident.filter((s) => s.length > 0),
);
const dailyV1 = fc.record(
  {
    v: fc.constant(1),
    ...header,
    partitions: fc.integer({ min: 1, max: 1024 }),
    rows: fc.array(
      fc.tuple(dailyKindId, ctx, counts).map(([k, c, n]) => [...k, ...c, ...n]),
      { maxLength: 5 },
    ),
  },
  { requiredKeys: ["v", "batchId", "producerId", "sealedAt", "rows"] },
);
const dailyV2 = fc.record(
  {
    v: fc.constant(2),
    ...header,
    partitions: fc.integer({ min: 1, max: 1024 }),
    groups: fc.array(
      fc.tuple(
        ctx,
        fc.array(
          fc.tuple(dailyKindId, counts).map(([k, n]) => [...k, ...n]),
          { maxLength: 4 },
        ),
      ),
      { maxLength: 4 },
    ),
  },
  { requiredKeys: ["v", "batchId", "producerId", "sealedAt", "groups"] },
);

/** Format 3 of a format 1 job: its rows as row text. */
function asV3(kind: "entity" | "daily", job: Record<string, unknown>): Record<string, unknown> {
  const { rows, ...rest } = job;
  const text =
    kind === "entity" ? encodeEntityRows(rows as EntityRow[]) : encodeDailyRows(rows as DailyRow[]);
  return { ...rest, v: 3, kind, rowCount: (rows as unknown[]).length, rowText: text };
}
const entityV3 = entityJob.map((j) => asV3("entity", j as Record<string, unknown>));

/**
 * Format 4: contexts and their facts as fact text. Some facts name nothing,
 * repeat a tag or count more successes than requests: both checks must refuse them.
 */
const fact = fc.record({
  tags: fc.array(fc.constantFrom("a", "b", "tag:é", "c,1:"), { maxLength: 3 }),
  user: fc.oneof(fc.constant(""), ident),
  team: fc.oneof(fc.constant(""), ident),
  org: fc.constant(""),
  endUser: fc.oneof(fc.constant(""), ident),
  n: fc.tuple(count, count, count, count, fc.nat({ max: 9 }), fc.nat({ max: 10 }), spend),
});
const dailyV4 = fc
  .record(
    {
      v: fc.constant(4),
      ...header,
      partitions: fc.integer({ min: 1, max: 1024 }),
      kind: fc.constant("daily"),
      groups: fc.array(fc.tuple(ctx, fc.array(fact, { maxLength: 4 })), { maxLength: 3 }),
    },
    { requiredKeys: ["v", "batchId", "producerId", "sealedAt", "kind", "groups"] },
  )
  .map(({ groups, ...job }) => {
    const w = new RowTextWriter();
    for (const [c, facts] of groups) {
      w.context(...c);
      for (const f of facts) w.fact(f.tags, f.user, f.team, f.org, f.endUser, ...f.n);
    }
    return { ...job, rowCount: w.rows, rowText: w.take() };
  });
const dailyV3 = dailyV1.map((j) => asV3("daily", j as Record<string, unknown>));

/** A format 3 job with its text cut, or a character of it replaced, inserted or removed. */
const textMutated = (arb: fc.Arbitrary<Record<string, unknown>>): fc.Arbitrary<unknown> =>
  arb
    .filter((j) => (j.rowText as string).length > 0)
    .chain((j) => {
      const t = j.rowText as string;
      return fc
        .tuple(
          fc.nat({ max: t.length - 1 }),
          fc.constantFrom("", ",", ":", "0", "9", "x", "\u0000", "99999:", "7,"),
          fc.integer({ min: 0, max: 3 }),
        )
        .map(([at, c, how]) => ({
          ...j,
          rowText:
            how === 0
              ? t.slice(0, at)
              : how === 1
                ? t.slice(0, at) + c + t.slice(at + 1)
                : how === 2
                  ? t.slice(0, at) + c + t.slice(at)
                  : t.slice(0, at) + t.slice(at + 1),
        }));
    });

/** Every path to a value inside `x` (object keys and array indices), the root excluded. */
function paths(x: unknown, at: (string | number)[] = []): (string | number)[][] {
  if (Array.isArray(x)) return x.flatMap((v, i) => [[...at, i], ...paths(v, [...at, i])]);
  if (typeof x === "object" && x !== null)
    return Object.entries(x).flatMap(([k, v]) => [[...at, k], ...paths(v, [...at, k])]);
  return [];
}

/** A deep copy of `x` with the value at `path` replaced, deleted (undefined) or appended to. */
function mutate(x: unknown, path: (string | number)[], value: unknown, how: number): unknown {
  const copy = structuredClone(x) as Record<string | number, unknown>;
  let parent = copy;
  for (const k of path.slice(0, -1)) parent = parent[k] as Record<string | number, unknown>;
  const last = path[path.length - 1] as string | number;
  if (how === 0) parent[last] = value;
  else if (how === 1 && Array.isArray(parent)) parent.push(value);
  else if (how === 1) parent.extra = value;
  else if (Array.isArray(parent)) parent.splice(Number(last), 1);
  else Reflect.deleteProperty(parent, last);
  return copy;
}

function agree(
  data: unknown,
  fast: (d: unknown) => unknown,
  schema: { safeParse: (d: unknown) => { success: boolean; data?: unknown } },
): void {
  // The hand check reads in place (splitting rows later mutates them): give each its own copy.
  const expected = schema.safeParse(structuredClone(data));
  const got = fast(structuredClone(data));
  assert.equal(
    got !== undefined,
    expected.success,
    `hand check ${got !== undefined ? "accepted" : "refused"} what the schema ${expected.success ? "accepts" : "refuses"}: ${JSON.stringify(data)}`,
  );
  if (got !== undefined) {
    const { v, batchId, producerId, sealedAt, partitions, rows } = got as Record<string, unknown>;
    assert.deepEqual(
      { v, batchId, producerId, sealedAt, partitions, rows },
      {
        ...(expected.data as Record<string, unknown>),
        partitions: (expected.data as Record<string, unknown>).partitions,
      },
    );
  }
}

const cases = [
  {
    name: "entity jobs",
    arb: entityJob as fc.Arbitrary<unknown>,
    fast: checkEntityJob,
    schema: entityJobSchema,
  },
  {
    name: "daily jobs, format 1",
    arb: dailyV1 as fc.Arbitrary<unknown>,
    fast: checkDailyJob,
    schema: dailyJobPayloadSchema,
  },
  {
    name: "daily jobs, format 2",
    arb: dailyV2 as fc.Arbitrary<unknown>,
    fast: checkDailyJob,
    schema: dailyJobPayloadSchema,
  },
  {
    name: "entity jobs, format 3",
    arb: entityV3 as fc.Arbitrary<unknown>,
    fast: checkEntityJob,
    schema: entityJobSchema,
  },
  {
    name: "daily jobs, format 3",
    arb: dailyV3 as fc.Arbitrary<unknown>,
    fast: checkDailyJob,
    schema: dailyJobPayloadSchema,
  },
  {
    name: "daily jobs, format 4",
    arb: dailyV4 as fc.Arbitrary<unknown>,
    fast: checkDailyJob,
    schema: dailyJobPayloadSchema,
  },
];

describe("the flush's hand-written job checks", () => {
  for (const c of cases) {
    it(`accept valid ${c.name} and read them as the schema does`, () => {
      fc.assert(fc.property(c.arb, (job) => agree(job, c.fast, c.schema)));
    });

    it(`agree with the schema on ${c.name} with one value replaced, added or removed`, () => {
      const mutated = c.arb
        .filter((job) => paths(job).length > 0)
        .chain((job) =>
          fc
            .tuple(fc.constantFrom(...paths(job)), wrong, fc.integer({ min: 0, max: 2 }))
            .map(([path, value, how]) => mutate(job, path, value, how)),
        );
      fc.assert(
        fc.property(mutated, (job) => agree(job, c.fast, c.schema)),
        { numRuns: 2_000 },
      );
    });
  }

  it("agree with the schema on format 3 and 4 text cut short or with a character changed", () => {
    for (const [arb, fast, schema] of [
      [entityV3, checkEntityJob, entityJobSchema],
      [dailyV3, checkDailyJob, dailyJobPayloadSchema],
      [dailyV4, checkDailyJob, dailyJobPayloadSchema],
    ] as const)
      fc.assert(
        fc.property(textMutated(arb), (job) => agree(job, fast, schema)),
        { numRuns: 2_000 },
      );
  });

  it("read a format 3 job of the other queue's kind as malformed", () => {
    fc.assert(
      fc.property(entityV3, dailyV3, (e, d) => {
        for (const [job, fast, schema] of [
          [{ ...e, kind: "daily" }, checkEntityJob, entityJobSchema],
          [{ ...d, kind: "entity" }, checkDailyJob, dailyJobPayloadSchema],
        ] as const) {
          agree(job, fast, schema);
          assert.equal(fast(job), undefined);
        }
      }),
    );
  });

  it("refuse what is not a job at all, as the schemas do", () => {
    for (const x of [null, undefined, 1, "job", [], [{}], {}, { v: 3 }])
      for (const c of cases) agree(x, c.fast, c.schema);
  });
});

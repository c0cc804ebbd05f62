import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import { IdMap, shardOf } from "../../src/produce/id-map.js";

/** Ids in the shapes a gateway sees: sequences, emails of one domain, tokens, odd strings. */
const idArb = fc.oneof(
  fc.nat({ max: 30_000 }).map((i) => `user-${i}`),
  fc.nat({ max: 30_000 }).map((i) => `someone.${i}@example.com`),
  fc.string({ unit: "grapheme", maxLength: 40 }),
  fc.string({ unit: "binary", maxLength: 6 }),
);

type Op = { op: "set"; id: string; v: number } | { op: "delete"; id: string };

const opArb: fc.Arbitrary<Op> = fc.oneof(
  { weight: 3, arbitrary: fc.record({ op: fc.constant("set" as const), id: idArb, v: fc.nat() }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant("delete" as const), id: idArb }) },
);

/** Applies ops to an IdMap and a Map side by side, checking every answer agrees. */
function replay(
  ops: readonly Op[],
  ids = new IdMap<number>(),
): { ids: IdMap<number>; ref: Map<string, number> } {
  const ref = new Map<string, number>();
  for (const o of ops) {
    if (o.op === "set") {
      ids.set(o.id, o.v);
      ref.set(o.id, o.v);
    } else {
      ids.delete(o.id);
      ref.delete(o.id);
    }
    assert.equal(ids.get(o.id), ref.get(o.id));
    assert.equal(ids.size, ref.size);
  }
  return { ids, ref };
}

describe("IdMap", () => {
  it("answers as a Map does, before and after it splits into shards", () => {
    fc.assert(
      fc.property(fc.array(opArb, { maxLength: 200 }), (ops) => {
        replay(ops);
      }),
      { numRuns: 200 },
    );
    // Past the split (8,192 entries): every id set, then half deleted, then some set again.
    const ops: Op[] = [];
    for (let i = 0; i < 20_000; i++) ops.push({ op: "set", id: `user-${i}`, v: i });
    for (let i = 0; i < 20_000; i += 2) ops.push({ op: "delete", id: `user-${i}` });
    for (let i = 0; i < 1_000; i++) ops.push({ op: "set", id: `user-${i}`, v: -i });
    const { ids, ref } = replay(ops);
    for (const [id, v] of ref) assert.equal(ids.get(id), v);
    assert.equal(ids.get("user-1"), -1);
    assert.equal(ids.get("user-19998"), undefined);
    assert.equal(ids.get(""), undefined);
  });

  it("answers as a Map does while a split is under way, whatever the calls in between", () => {
    // A split of 40 entries, one moved a call: sets, replacements and deletes
    // of ids not moved yet, moved already, and new, all land during the move.
    const small = fc.nat({ max: 60 }).map((i) => `id-${i}`);
    const smallOp: fc.Arbitrary<Op> = fc.oneof(
      {
        weight: 3,
        arbitrary: fc.record({ op: fc.constant("set" as const), id: small, v: fc.nat() }),
      },
      { weight: 1, arbitrary: fc.record({ op: fc.constant("delete" as const), id: small }) },
    );
    fc.assert(
      fc.property(fc.array(smallOp, { minLength: 40, maxLength: 300 }), (ops) => {
        const { ids, ref } = replay(ops, new IdMap<number>(40, 1));
        for (let i = 0; i <= 60; i++) assert.equal(ids.get(`id-${i}`), ref.get(`id-${i}`));
      }),
      { numRuns: 300 },
    );
  });

  it("keeps the empty id and ids that differ only early on apart", () => {
    const ids = new IdMap<string>();
    const long = "x".repeat(100);
    for (let i = 0; i < 10_000; i++) ids.set(`${i}${long}`, String(i));
    ids.set("", "empty");
    assert.equal(ids.size, 10_001);
    assert.equal(ids.get(""), "empty");
    // The shard hash reads only the last characters: these share a shard, and stay distinct.
    assert.equal(shardOf(`1${long}`), shardOf(`2${long}`));
    assert.equal(ids.get(`1${long}`), "1");
    assert.equal(ids.get(`9999${long}`), "9999");
  });

  it("spreads ids of one pattern over the shards", () => {
    const shapes: ((i: number) => string)[] = [
      (i) => `user-${i}`,
      (i) => `first.last${i}@example.com`,
      (i) => `${(Math.imul(i, 2654435761) >>> 0).toString(36)}@corp.example.org`,
      (i) => `end-user-${(i * 7919) % 100_000}`,
    ];
    for (const shape of shapes) {
      const counts = new Array<number>(64).fill(0);
      for (let i = 0; i < 64_000; i++)
        counts[shardOf(shape(i))] = (counts[shardOf(shape(i))] ?? 0) + 1;
      // 1,000 a shard if even; no shard more than 1.5x that, none empty.
      assert.ok(Math.max(...counts) < 1_500, `${shape(7)}: ${Math.max(...counts)}`);
      assert.ok(Math.min(...counts) > 500, `${shape(7)}: ${Math.min(...counts)}`);
    }
  });
});

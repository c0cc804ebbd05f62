import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { decodeDailyFacts, decodeEntityRows } from "../../src/contract/row-text.js";
import type { SealedBatch, SpendSink } from "../../src/contract/spend-sink.js";
import { SpendProducer } from "../../src/produce/producer.js";

class MemorySink implements SpendSink {
  readonly batches: SealedBatch[] = [];
  write(b: SealedBatch): Promise<void> {
    this.batches.push(b);
    return Promise.resolve();
  }
  close(): Promise<void> {
    return Promise.resolve();
  }
}

/** Picodollars per end user in a sink's batches, from entity and daily rows alike. */
function endUserSpend(batches: readonly SealedBatch[]): {
  entity: Map<string, bigint>;
  daily: Map<string, bigint>;
} {
  const entity = new Map<string, bigint>();
  const daily = new Map<string, bigint>();
  for (const b of batches) {
    if (b.kind === "entity") {
      for (const r of decodeEntityRows(b.rowText))
        if (r[0] === "end_user") entity.set(r[1], (entity.get(r[1]) ?? 0n) + BigInt(r[3]));
    } else {
      for (const r of decodeDailyFacts(b.rowText).rows)
        if (r[0] === "end_user") daily.set(r[1], (daily.get(r[1]) ?? 0n) + BigInt(r[16]));
    }
  }
  return { entity, daily };
}

function producer(sink: SpendSink): SpendProducer {
  return new SpendProducer({
    sink,
    flushIntervalMs: 3_600_000,
    flushJitterMs: 0,
    maxBufferedRows: 1_000_000,
    maxRowsPerJob: 97,
    partitions: 4,
  });
}

/**
 * Seals are sliced across turns of the event loop, a producer reuses one job
 * writer for all its seals, and open jobs come from a pool every producer of
 * the process shares (sealer.ts): two producers sealing at once, seal after
 * seal, must still each send exactly what they recorded.
 */
describe("seals sharing the process's job pool", () => {
  it("two producers sealing at once, three seals each, send exactly their own spend", async () => {
    const sinks = [new MemorySink(), new MemorySink()];
    const ps = sinks.map(producer);
    const want = [new Map<string, bigint>(), new Map<string, bigint>()];
    for (let round = 0; round < 3; round++) {
      for (let w = 0; w < 2; w++) {
        // Enough rows for many slices of a seal; ids overlap between producers and rounds.
        for (let i = 0; i < 3_000; i++) {
          const id = `eu-${(i * 7 + round * 1_000 + w) % 4_000}`;
          const pico = BigInt(1 + ((i + w) % 5)) * 1_000_000n;
          (ps[w] as SpendProducer).record({
            spend: `0.00000${1 + ((i + w) % 5)}`,
            endUserId: id,
            model: w === 0 ? "m-a" : "m-b",
          });
          const m = want[w] as Map<string, bigint>;
          m.set(id, (m.get(id) ?? 0n) + pico);
        }
      }
      await Promise.all(ps.map((p) => p.flush()));
    }
    for (let w = 0; w < 2; w++) {
      const sink = sinks[w] as MemorySink;
      const got = endUserSpend(sink.batches);
      assert.deepEqual(got.entity, want[w]);
      assert.deepEqual(got.daily, want[w]);
      for (const b of sink.batches) {
        const rows =
          b.kind === "entity" ? decodeEntityRows(b.rowText) : decodeDailyFacts(b.rowText).rows;
        assert.equal(rows.length, b.rowCount);
        assert.ok(b.rowCount <= 97);
        if (b.kind === "daily")
          for (const r of decodeDailyFacts(b.rowText).rows)
            assert.equal(r[4], w === 0 ? "m-a" : "m-b");
      }
      assert.equal(new Set(sink.batches.map((b) => b.batchId)).size, sink.batches.length);
    }
    await Promise.all(ps.map((p) => p.close()));
  });
});

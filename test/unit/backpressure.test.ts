import assert from "node:assert/strict";
import { describe, it } from "node:test";
import type { PipelineLoad } from "../../src/contract/spend-sink.js";
import { silentLogger } from "../../src/observe/logger.js";
import { SpendMetrics } from "../../src/observe/metrics.js";
import {
  admissionRate,
  Backpressure,
  pressureOf,
  type BackpressureRules,
} from "../../src/produce/backpressure.js";
import { producerMetrics } from "../../src/produce/producer-metrics.js";
import { freshestRateAge } from "../../src/queue/backlog.js";
import { ManualClock } from "../support/manual-clock.js";

// Mean hold: (1000 - 250 / 2) / 2 = 437.5 ms.
const RULES: BackpressureRules = {
  maxBacklogAgeMs: 1_000,
  intervalMs: 1_000,
  jitterMs: 250,
  heldRowsWithoutRate: 20_000,
};
const load = (over: Partial<PipelineLoad>): PipelineLoad => ({
  backlogAgeMs: 0,
  heldRows: 0,
  producers: 4,
  flushRowsPerSec: 40_000,
  flushRateAgeMs: 30_000,
  ...over,
});

describe("proportional back-pressure", () => {
  it("pressure is each rule's figure over its limit, the larger one named", () => {
    assert.deepEqual(pressureOf(load({ backlogAgeMs: 1_500 }), RULES), {
      pressure: 1.5,
      reason: "backlog_age",
    });
    // 35,000 rows at 40,000 rows/s: 875 ms of work, twice the 437.5 ms mean hold.
    assert.deepEqual(pressureOf(load({ heldRows: 35_000, backlogAgeMs: 500 }), RULES), {
      pressure: 2,
      reason: "held_rows",
    });
    assert.deepEqual(pressureOf(load({ heldRows: 30_000, flushRowsPerSec: null }), RULES), {
      pressure: 1.5,
      reason: "held_rows_no_rate",
    });
  });

  it("admits without limit within the limits, a share of the flush rate falling in proportion past them to a floor, none at five times", () => {
    // A rate published 30 s ago: no sign the flush is committing right now.
    const rate = (over: Partial<PipelineLoad>, pressure: number): number =>
      admissionRate(load(over), pressure, 5, 20_000);
    assert.equal(rate({}, 1), Number.POSITIVE_INFINITY);
    // Share: 40,000 rows/s over 4 producers at 5 rows per event = 2,000 events/s.
    assert.equal(rate({}, 1.000001) > 1_999, true);
    assert.equal(rate({}, 1.5), 1_000);
    assert.equal(rate({}, 1.625), 750);
    // The floor: a quarter of the share, however far behind, while the flush commits.
    assert.equal(rate({}, 1.75), 500);
    assert.equal(rate({}, 2), 500);
    assert.equal(rate({}, 4.99), 500);
    assert.equal(rate({}, 5), 0);
    assert.equal(rate({}, 12), 0);
    // No rate published yet: one transaction's rows a second stands in for it
    // (20,000 / 4 / 5 = 1,000 events/s of share).
    assert.equal(rate({ flushRowsPerSec: null, flushRateAgeMs: null }, 1.5), 500);
    assert.equal(rate({ flushRowsPerSec: null, flushRateAgeMs: null }, 3), 250);
    assert.equal(rate({ flushRowsPerSec: null, flushRateAgeMs: null }, 5), 0);
  });

  it("keeps the floor past five times the limits while a worker has just published its rate: the flush is committing", () => {
    const rate = (ageMs: number | null, pressure: number): number =>
      admissionRate(load({ flushRateAgeMs: ageMs }), pressure, 5, 20_000);
    assert.equal(rate(2_000, 5), 500);
    assert.equal(rate(10_000, 40), 500);
    // Not published for longer than FRESH_RATE_MS, or with no lifetime to tell: stopped.
    assert.equal(rate(10_001, 5), 0);
    assert.equal(rate(null, 5), 0);
  });

  it("reads how long ago the freshest rate was published from what is left of its lifetime", () => {
    assert.equal(freshestRateAge([59_000, 20_000]), 1_000);
    // -2: no rate; -1: a rate set without the lifetime workers give it.
    assert.equal(freshestRateAge([-2, -1]), null);
    assert.equal(freshestRateAge([-2, 45_500]), 14_500);
  });

  it("admits requests at the rate it reads, from an empty bucket, and all again once caught up", async () => {
    const clock = new ManualClock();
    let current = load({ backlogAgeMs: 1_500 });
    let handedOver = 0;
    const bp = new Backpressure(
      () => Promise.resolve(current),
      "p",
      () => 0,
      () => 5,
      RULES,
      100,
      clock,
      () => clock.now(),
      silentLogger,
      producerMetrics(new SpendMetrics()),
      () => {
        handedOver++;
        return Promise.resolve();
      },
    );
    await bp.check();
    assert.equal(bp.on, true);
    assert.equal(handedOver, 1, "turning on hands over what the producer holds");
    assert.equal(bp.admittedPerSecond, 1_000);
    // Two requests every millisecond for 2 s, at 1,000 per second admitted: about half.
    let admitted = 0;
    for (let ms = 0; ms < 2_000; ms++) {
      await clock.advance(1);
      if (bp.admit()) admitted++;
      if (bp.admit()) admitted++;
    }
    assert.ok(admitted >= 1_990 && admitted <= 2_010, `admitted ${admitted} of 4,000 in 2 s`);
    current = load({ backlogAgeMs: 2_500 });
    await bp.check();
    assert.equal(bp.admit(), false, "twice the limit: nothing admitted");
    current = load({});
    await bp.check();
    assert.equal(bp.on, false);
    assert.equal(bp.admit(), true);
    bp.stop();
  });
});

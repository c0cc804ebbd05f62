/**
 * One gateway process of the end-to-end benchmark. After the start barrier
 * it records generated traffic as fast as it can for DURATION_MS (in slices,
 * so its flush timer and sends run in between), plus a staleness marker every
 * MARKER_EVERY_MS, then closes its producer and prints a ProducerReport.
 *
 * It prints no ledger: the traffic is a pure function of SEED, the event
 * count and the fixed start time, so the parent replays it. A ledger of a
 * few hundred thousand rows per child would not fit through a pipe in time.
 */
import os from "node:os";
import { setImmediate as yieldToLoop } from "node:timers/promises";
import { Redis } from "ioredis";
import { trafficGenerator, type TrafficShape } from "../src/demo/traffic.js";
import { SpendMetrics } from "../src/observe/metrics.js";
import { producerMetrics } from "../src/produce/producer-metrics.js";
import { BufferFullError } from "../src/produce/producer.js";
import { silentLogger } from "../src/observe/logger.js";
import { createSpendProducer } from "../src/wiring/create-producer.js";
import { TEST_REDIS_URL, testConfig } from "../test/support/redis.js";
import {
  barrierKeys,
  MARKER_PREFIX,
  MARKER_SPEND,
  type ProducerReport,
  type SinkMode,
} from "./protocol.js";

function need(name: string): string {
  const v = process.env[name];
  if (v === undefined || v === "") throw new Error(`${name} is not set`);
  return v;
}

const mode = need("MODE") as SinkMode;
const index = Number(need("CHILD_INDEX"));
const seed = Number(need("SEED"));
const prefix = need("PREFIX");
const databaseUrl = need("DATABASE_URL");
const shape = JSON.parse(need("SHAPE")) as TrafficShape;
const durationMs = Number(need("DURATION_MS"));
const markerEveryMs = Number(need("MARKER_EVERY_MS"));
/** Flush partitions (the partitions section); unset: the plain unpartitioned setup. */
const partitions = process.env.PARTITIONS ? Number(process.env.PARTITIONS) : undefined;
/** Events per second to record at (paced runs); unset or 0: as fast as the machine allows. */
const ratePerSec = Number(process.env.RATE_PER_SEC ?? "0");
// Enough events per slice to amortise the yield, few enough that timers fire on time.
const SLICE = 100;

try {
  // Lower priority than PostgreSQL, Redis and the flush worker: in production
  // the gateways run on their own machines, here they would otherwise starve
  // the very services whose behaviour is measured.
  os.setPriority(Number(process.env.NICE ?? "0"));
} catch {
  // Not allowed to renice: run at normal priority.
}

const metrics = new SpendMetrics();
// As a gateway wires its producer (createSpendProducer): only the chosen
// sink's modules load, which matters when sixteen of these start at once.
const config = testConfig(prefix, databaseUrl, { flush_partitions: partitions ?? 1 });
const producer = await createSpendProducer(
  { ...config, useRedisBuffer: mode !== "direct" },
  {
    metrics,
    logger: silentLogger,
    startupWaitMs: 30_000,
    options: {
      flushIntervalMs: Number(need("INTERVAL_MS")),
      flushJitterMs: Number(need("JITTER_MS")),
      closeTimeoutMs: 120_000,
      backpressureBacklogAgeMs: Number(process.env.BACKPRESSURE_MS ?? "0"),
      backlogCheckEveryMs: 250,
    },
  },
);

const control = new Redis(TEST_REDIS_URL);
const keys = barrierKeys(prefix);
await control.incr(keys.ready);
let goAt = 0;
for (const deadline = Date.now() + 300_000; goAt === 0;) {
  goAt = Number((await control.get(keys.go)) ?? "0");
  if (goAt === 0 && Date.now() > deadline) throw new Error("no go signal");
  if (goAt === 0) await new Promise((r) => setTimeout(r, 10));
}
while (Date.now() < goAt) await new Promise((r) => setTimeout(r, 1));

// A fixed clock for the generator: every event's start time (and so its day) is goAt, replayable.
const gen = trafficGenerator(seed, shape, () => goAt);
const endAt = goAt + durationMs;
const rejected: number[] = [];
const markers: { id: string; at: number }[] = [];
const perSecond: number[] = [];
let events = 0;
let pausedMs = 0;
let stoppedMs = 0;
let nextMarker = goAt;
for (;;) {
  const now = Date.now();
  if (now >= endAt) break;
  // Back-pressure: a gateway answers this request 503, so it is neither served nor
  // recorded, markers included (their staleness is that of events a gateway accepts).
  // Proportional back-pressure admits requests at a rate: the next is due a token later.
  if (producer.backlogged) {
    const rate = producer.admittedPerSecond;
    const stopped = rate <= 0;
    const t0 = Date.now();
    const waitMs = stopped ? Math.min(50, markerEveryMs) : Math.min(50, Math.max(1, 1000 / rate));
    await new Promise((r) => setTimeout(r, waitMs));
    pausedMs += Date.now() - t0;
    if (stopped) stoppedMs += Date.now() - t0;
    // A marker due while refused is skipped, not recorded late.
    while (nextMarker <= Date.now()) nextMarker += markerEveryMs;
    continue;
  }
  if (now >= nextMarker) {
    const id = `${MARKER_PREFIX}${index}-${markers.length}`;
    try {
      producer.record({ spend: MARKER_SPEND, endUserId: id, startTime: now });
      markers.push({ id, at: now });
    } catch (err) {
      if (!(err instanceof BufferFullError)) throw err;
    }
    nextMarker += markerEveryMs;
  }
  const before = events;
  for (let i = 0; i < SLICE; i++) {
    // Each request is admitted on its own; a refused one ends the slice (above, next turn).
    if (i > 0 && producer.backlogged) break;
    const e = gen();
    try {
      producer.record(e);
    } catch (err) {
      if (!(err instanceof BufferFullError)) throw err;
      rejected.push(events);
    }
    events++;
  }
  const sec = Math.floor((now - goAt) / 1000);
  perSecond[sec] = (perSecond[sec] ?? 0) + events - before;
  // Paced: ahead of the rate, wait until the schedule catches up (markers keep their own clock).
  const dueAt = goAt + (events / ratePerSec) * 1000;
  if (ratePerSec > 0 && dueAt > Date.now())
    await new Promise((r) => setTimeout(r, Math.min(dueAt - Date.now(), markerEveryMs)));
  else await yieldToLoop();
}
const windowMs = Date.now() - goAt;

const closeStart = Date.now();
let closeError: string | undefined;
try {
  await producer.close();
} catch (err) {
  closeError = err instanceof Error ? err.message : String(err);
}
const closeMs = Date.now() - closeStart;
await control.incr(keys.closed);
control.disconnect();

const failures = await producerMetrics(metrics).enqueueFailures.get();
const report: ProducerReport = {
  index,
  seed,
  goAt,
  events,
  rejected,
  markers,
  perSecond: Array.from(perSecond, (v) => v ?? 0),
  windowMs,
  closeMs,
  enqueueFailures: failures.values[0]?.value ?? 0,
  pausedMs,
  stoppedMs,
  ...(closeError !== undefined ? { closeError } : {}),
};
// Exit only once the pipe has the whole line.
process.stdout.write(`${JSON.stringify(report)}\n`, () => process.exit(0));

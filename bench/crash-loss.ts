/**
 * Section 6: what a gateway killed without warning (SIGKILL) loses, and what
 * the two ways to bound it cost.
 *
 * A real gateway process (the CLI) serves chat requests from 8 clients and
 * is SIGKILLed at a random moment; a flush then drains what reached Redis,
 * and the seconds of answered traffic PostgreSQL does not hold are the loss
 * window (test/support/crash-window.ts). Measured at the default seal
 * interval and at LiteLLM's 10 s (+5 s jitter), same run.
 *
 * The alternative to a short interval is a local spool: append each event to
 * a file (group commit) and replay it on restart. Whatever else a spool
 * does, it must serialise every event on the request path and write it out:
 * that floor is timed here next to record() itself, so the choice is made on
 * figures.
 */
import { closeSync, openSync, rmSync, writeSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import { trafficGenerator, type TrafficShape } from "../src/demo/traffic.js";
import { picoToDecimal } from "../src/contract/money.js";
import { SpendProducer } from "../src/produce/producer.js";
import type { SealedBatch, SpendSink } from "../src/contract/spend-sink.js";
import { measureCrashWindow, type CrashWindow } from "../test/support/crash-window.js";
import { TEST_REDIS_URL } from "../test/support/redis.js";
import type { Resources } from "./resources.js";
import { median, progress } from "./util.js";

export interface CrashPlan {
  /** Kills per configuration. */
  trials: number;
  /** Traffic before the kill: at least this, plus a random part of `randomMs`. */
  runMs: number;
  randomMs: number;
  /** LiteLLM's interval needs a longer run for its window to show. */
  litellmRunMs: number;
  /** Events timed for the spool floor and record(). */
  spoolEvents: number;
}

/** One kill, JSON-safe (money as exact decimal text). */
export interface CrashTrial {
  served: number;
  lostRequests: number;
  lostSeconds: number;
  elapsedMs: number;
  servedUsd: string;
  committedUsd: string;
}

export interface CrashConfigResult {
  label: string;
  intervalSeconds: number;
  jitterSeconds: number;
  trials: CrashTrial[];
  maxLostSeconds: number;
  medianLostSeconds: number;
}

export interface CrashLossResult {
  configs: CrashConfigResult[];
  /** JSON.stringify + append (group commit every 1 000 events) per event, µs: a spool's floor. */
  spoolFloorUsPerEvent: number;
  /** record() per event in the same loop, same events, µs (new rows included). */
  recordUsPerEvent: number;
}

/** A sink that keeps nothing: the spool comparison times recording alone. */
class NullSink implements SpendSink {
  write(_b: SealedBatch): Promise<void> {
    return Promise.resolve();
  }
  close(): Promise<void> {
    return Promise.resolve();
  }
}

function spoolFloor(n: number, shape: TrafficShape): { spoolUs: number; recordUs: number } {
  const gen = trafficGenerator(606, shape);
  const events = Array.from({ length: n }, () => gen());
  const file = join(tmpdir(), `spend-spool-${process.pid}.log`);
  const fd = openSync(file, "w");
  let spoolMs = Number.POSITIVE_INFINITY;
  let recordMs = Number.POSITIVE_INFINITY;
  try {
    for (let rep = 0; rep < 3; rep++) {
      let t = performance.now();
      let pending: string[] = [];
      for (const e of events) {
        pending.push(JSON.stringify(e));
        if (pending.length === 1_000) {
          writeSync(fd, `${pending.join("\n")}\n`);
          pending = [];
        }
      }
      if (pending.length > 0) writeSync(fd, `${pending.join("\n")}\n`);
      spoolMs = Math.min(spoolMs, performance.now() - t);

      const p = new SpendProducer({ sink: new NullSink(), flushIntervalMs: 3_600_000 });
      t = performance.now();
      for (const e of events) p.record(e);
      recordMs = Math.min(recordMs, performance.now() - t);
      void p.close();
    }
  } finally {
    closeSync(fd);
    rmSync(file, { force: true });
  }
  return { spoolUs: (spoolMs * 1000) / n, recordUs: (recordMs * 1000) / n };
}

function trialOf(w: CrashWindow): CrashTrial {
  return {
    served: w.served,
    lostRequests: w.lostRequests,
    lostSeconds: w.lostSeconds,
    elapsedMs: w.elapsedMs,
    servedUsd: picoToDecimal(w.servedPico),
    committedUsd: picoToDecimal(w.committedPico),
  };
}

export async function measureCrashLoss(
  plan: CrashPlan,
  shape: TrafficShape,
  res: Resources,
): Promise<CrashLossResult> {
  const db = await res.database("crash");
  const configs: CrashConfigResult[] = [];
  try {
    for (const c of [
      { label: "default", intervalSeconds: undefined, jitterSeconds: undefined, runMs: plan.runMs },
      { label: "LiteLLM's 10 s", intervalSeconds: 10, jitterSeconds: 5, runMs: plan.litellmRunMs },
    ]) {
      const trials: CrashTrial[] = [];
      for (let i = 0; i < plan.trials; i++) {
        const prefix = res.prefix("crash");
        const w = await measureCrashWindow({
          db,
          prefix,
          redisUrl: TEST_REDIS_URL,
          runMs: c.runMs + Math.floor(Math.random() * plan.randomMs),
          ...(c.intervalSeconds !== undefined ? { intervalSeconds: c.intervalSeconds } : {}),
          ...(c.jitterSeconds !== undefined ? { jitterSeconds: c.jitterSeconds } : {}),
        });
        await res.cleanPrefix(prefix);
        trials.push(trialOf(w));
        progress(
          "crash",
          `${c.label}: killed after ${(w.elapsedMs / 1000).toFixed(1)} s, lost ${w.lostSeconds.toFixed(2)} s (${w.lostRequests} of ${w.served} answered requests)`,
        );
      }
      const lost = trials.map((w) => w.lostSeconds);
      configs.push({
        label: c.label,
        intervalSeconds: c.intervalSeconds ?? 1,
        jitterSeconds: c.jitterSeconds ?? 0.25,
        trials,
        maxLostSeconds: Math.max(...lost),
        medianLostSeconds: median(lost),
      });
    }
  } finally {
    await res.dropDatabase(db);
  }
  const floor = spoolFloor(plan.spoolEvents, shape);
  progress(
    "crash",
    `spool floor ${floor.spoolUs.toFixed(3)} µs/event (serialise + append) vs record() ${floor.recordUs.toFixed(3)} µs/event`,
  );
  return { configs, spoolFloorUsPerEvent: floor.spoolUs, recordUsPerEvent: floor.recordUs };
}

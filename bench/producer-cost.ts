/**
 * Section 1: what recording spend costs a gateway process. record() per
 * event (hot, cold and a realistic interval), heap per aggregated row, and
 * the cost relative to a reference request workload, recording on vs off.
 */
import { monitorEventLoopDelay, performance, PerformanceObserver } from "node:perf_hooks";
import { setImmediate as yieldToLoop } from "node:timers/promises";
import v8 from "node:v8";
import vm from "node:vm";
import { trafficGenerator, type TrafficShape } from "../src/demo/traffic.js";
import { Aggregator } from "../src/produce/aggregator.js";
import { SpendProducer } from "../src/produce/producer.js";
import { validateSpendEvent, type SpendEvent } from "../src/produce/spend-event.js";
import { DEFAULT_CONFIG } from "../src/config/config.js";
import { jobPayload } from "../src/queue/queue-sink.js";
import type { SealedBatch, SpendSink } from "../src/contract/spend-sink.js";
import { spawnPinned } from "./pinned.js";
import type { ProducerPlan } from "./plan.js";
import {
  mainThreadOnCpuMs,
  progress,
  spread,
  timeAsync,
  timeSync,
  type Spread,
  type Timed,
} from "./util.js";

export interface PerEvent {
  /** Nanoseconds per event, wall clock (hrtime), median over repetitions. */
  wallNs: Spread;
  /** Nanoseconds per event, process CPU time: immune to being preempted by other load. */
  cpuNs: Spread;
  eventsPerRep: number;
}

export interface ProducerCostResult {
  typicalEvent: SpendEvent;
  /** Every row the event touches is already held: the steady-state path. */
  hot: PerEvent;
  /** Every event adds rows (a never-seen end user): the slowest path. */
  cold: PerEvent;
  /**
   * One flush interval of a busy gateway: a fresh producer, realistic traffic
   * (early events add many rows, later ones fewer), and the seal at the end amortised.
   */
  interval: PerEvent & { newRowsPerEvent: number; sealShare: Spread };
  heap: { bytesPerRow: Spread; rowsPerRun: number; eventsPerRun: number };
  /**
   * Issue 22, goal 1a: what a gateway pays per event in steady state, all
   * in. One long-lived producer (rows outlive a seal, as in a gateway) fed
   * the benchmark's realistic traffic (Zipf-like ids, fresh strings per event
   * as a gateway parses them), sealed every `sealEvery` events (one seal
   * interval of a busy gateway), and every job encoded as QueueSink encodes
   * it for BullMQ (the default job format: entity rows and daily facts as
   * row text, in JSON): record + seal + the send's CPU short of Redis I/O,
   * per event. rowsSentPerEvent counts entity rows and daily facts.
   */
  allIn: PerEvent & { sealEvery: number; rowsSentPerEvent: number; newRowsPerEvent: number };
  /**
   * Issue 22, goal 2: the longest the producer blocks its event loop, with
   * `heldRows` rows pending, while flush() seals and sends them (the sink
   * encodes each job and yields as Redis I/O would). monitorEventLoopDelay's
   * max (1 ms resolution), and the longest gap between 1 ms ticks.
   */
  stall: StallResult;
  gateway: GatewayOverhead;
}

export interface StallResult {
  heldRows: number;
  /** monitorEventLoopDelay max during the seal and send, ms (median over reps). */
  maxDelayMs: Spread;
  /** The longest gap between two 1 ms interval ticks, less the 1 ms, ms. */
  maxGapMs: Spread;
  /** flush() from call to last job encoded, ms. */
  flushMs: Spread;
  /**
   * Of that, how long the main thread was on a CPU, ms (Linux only): the
   * rest of the flush's wall time it was waiting for the core, taken by
   * V8's own threads on the pinned core (or the machine).
   */
  flushOnCpuMs: Spread | null;
  /** monitorEventLoopDelay max of the producer's first seals (warm-up, not in the spreads), ms. */
  firstSealsMaxDelayMs: number[];
  /**
   * The longest one record() call took while a rep's rows were recorded, ms:
   * the producer's other way to block the event loop (its slabs, lists and
   * maps growing as rows are added).
   */
  longestRecordMs: Spread;
  /**
   * The longest record() call no garbage collection ran in, ms: the
   * producer's own code. A collection's cost to a gateway is what the
   * gateway bench's p99 (recording on vs off) shows.
   */
  longestRecordNoGcMs: Spread;
  /** The longest collection pauses that fell in a slow record() call, ms. */
  recordGcPauseMs: Spread;
}

// Seals a stall measurement makes before the reps it reports (see measureStall).
const STALL_WARM_SEALS = 3;

export interface GatewayOverhead {
  description: string;
  requestBytes: number;
  responseBytes: number;
  /** Reference workload alone, nanoseconds per request. */
  offWallNs: Spread;
  offCpuNs: Spread;
  /** Added time with recording on, hot cells, as a percentage of the reference (wall). */
  hotAddedPct: Spread;
  /** The same from CPU time: steadier when other load preempts the loops. */
  hotAddedPctCpu: Spread;
  /** Added time with recording on, realistic interval incl. seal, as a percentage (wall). */
  intervalAddedPct: Spread;
  intervalAddedPctCpu: Spread;
  requestsPerRep: number;
}

export interface PinnedProducerCost extends ProducerCostResult {
  /** The core the measuring process was pinned to (taskset), or null where it could not be. */
  pinnedCpu: number | null;
}

/** measureProducerCost in a child process pinned to one core (bench/pinned.ts says why). */
export async function measureProducerCostPinned(
  plan: ProducerPlan,
  shape: TrafficShape,
): Promise<PinnedProducerCost> {
  const p = spawnPinned("producer-cost-child.ts", {
    BENCH_PRODUCER_PLAN: JSON.stringify({ plan, shape }),
  });
  const code = await p.done;
  if (code !== 0) throw new Error(`producer cost process exited with code ${String(code)}`);
  const last = p.stdout().trim().split("\n").pop() ?? "";
  return { ...(JSON.parse(last) as ProducerCostResult), pinnedCpu: p.cpu };
}

/** A sink that accepts everything at once: only the producer's own work is measured. */
const NULL_SINK: SpendSink = {
  write: () => Promise.resolve(),
  close: () => Promise.resolve(),
};

/**
 * A sink that does the CPU work QueueSink.write does before Redis: the job
 * payload in the default format (jobPayload, as QueueSink builds it) and its
 * JSON, as BullMQ's add serialises it. With `yieldEach`, it yields to the
 * event loop after each job as a send awaiting Redis would.
 */
class EncodingSink implements SpendSink {
  rows = 0;
  bytes = 0;
  constructor(private readonly yieldEach = false) {}
  async write(b: SealedBatch): Promise<void> {
    this.bytes += JSON.stringify(jobPayload(b, DEFAULT_CONFIG.producer.jobFormat)).length;
    this.rows += b.rowCount;
    if (this.yieldEach) await yieldToLoop();
  }
  close(): Promise<void> {
    return Promise.resolve();
  }
}

function newProducer(sink: SpendSink = NULL_SINK): SpendProducer {
  // Timer, bound and early flush all out of the way: nothing but record() runs.
  return new SpendProducer({
    sink,
    flushIntervalMs: 3_600_000,
    flushJitterMs: 0,
    maxBufferedRows: 1_000_000_000,
  });
}

/**
 * The brief's typical event names a key, user, team, org, end user and two
 * tags; the generator omits the end user and tags at random, so they are
 * filled in here (ids still drawn from the Zipf-like spread).
 */
export function typicalEvents(
  n: number,
  seed: number,
  shape: TrafficShape,
  now: number,
): SpendEvent[] {
  const gen = trafficGenerator(seed, shape, () => now);
  const out: SpendEvent[] = [];
  for (let i = 0; i < n; i++) {
    const e = gen();
    e.endUserId ??= `end-user-${(i * 7919) % shape.endUsers}`;
    const env = e.tags?.find((t) => t.startsWith("env:")) ?? "env:prod";
    const feature =
      e.tags?.find((t) => t.startsWith("feature:")) ??
      `feature:${(i * 31) % Math.max(1, shape.tags - 2)}`;
    e.tags = [env, feature];
    out.push(e);
  }
  return out;
}

function recordLoop(p: SpendProducer, events: readonly SpendEvent[], n: number): void {
  const len = events.length;
  for (let i = 0; i < n; i++) p.record(events[i % len] as SpendEvent);
}

function perEvent(runs: readonly Timed[], events: number): PerEvent {
  return {
    wallNs: spread(runs.map((r) => r.wallNs / events)),
    cpuNs: spread(runs.map((r) => r.cpuNs / events)),
    eventsPerRep: events,
  };
}

function getGc(): () => void {
  const exposed = (globalThis as { gc?: () => void }).gc;
  if (exposed !== undefined) return exposed;
  // Heap per row needs a full GC before each reading; tsx offers no way to pass --expose-gc.
  v8.setFlagsFromString("--expose-gc");
  return vm.runInNewContext("gc") as () => void;
}

function heapUsed(gc: () => void): number {
  // Twice: the first pass can leave weak references and finalizers for the second.
  gc();
  gc();
  // Typed arrays' storage (the aggregator's counter slabs) is outside the JS heap: counted too.
  const m = process.memoryUsage();
  return m.heapUsed + m.arrayBuffers;
}

export async function measureProducerCost(
  plan: ProducerPlan,
  shape: TrafficShape,
): Promise<ProducerCostResult> {
  const now = Date.now();
  const S = "producer";
  // A full GC before every timed loop: otherwise one variant pays for the garbage of the one before.
  const gc = getGc();

  // Hot: warm the producer with the pool, then every record() adds to existing rows.
  progress(S, `record() hot path: ${plan.reps} x ${plan.eventsPerRep} events`);
  const pool = typicalEvents(plan.hotPool, 11, shape, now);
  const hotProducer = newProducer();
  recordLoop(hotProducer, pool, pool.length);
  for (let i = 0; i < plan.warmupReps; i++) recordLoop(hotProducer, pool, plan.eventsPerRep);
  const hotRuns: Timed[] = [];
  for (let i = 0; i < plan.reps; i++) {
    gc();
    hotRuns.push(timeSync(() => recordLoop(hotProducer, pool, plan.eventsPerRep)));
  }
  await hotProducer.close();

  // Cold: a distinct end user per event, so each adds an entity and a daily row.
  progress(S, `record() cold path (every event adds rows): ${plan.reps} reps`);
  const coldN = Math.min(plan.eventsPerRep, 50_000);
  const coldRuns: Timed[] = [];
  for (let i = -plan.warmupReps; i < plan.reps; i++) {
    const evs = typicalEvents(coldN, 100 + i, shape, now).map((e, j) => ({
      ...e,
      endUserId: `cold-${i}-${j}`,
    }));
    const p = newProducer();
    gc();
    const t = timeSync(() => recordLoop(p, evs, evs.length));
    if (i >= 0) coldRuns.push(t);
    await p.close();
  }

  // Interval: realistic traffic into a fresh producer, then the seal it ends with.
  progress(S, `one ${plan.intervalEvents}-event interval incl. seal: ${plan.reps} reps`);
  const intervalRuns: Timed[] = [];
  const sealShares: number[] = [];
  let newRowsPerEvent = 0;
  for (let i = -plan.warmupReps; i < plan.reps; i++) {
    const evs = typicalEvents(plan.intervalEvents, 200 + i, shape, now);
    const p = newProducer();
    gc();
    const rec = timeSync(() => recordLoop(p, evs, evs.length));
    const seal = await timeAsync(() => p.flush());
    if (i >= 0) {
      intervalRuns.push({ wallNs: rec.wallNs + seal.wallNs, cpuNs: rec.cpuNs + seal.cpuNs });
      sealShares.push(seal.wallNs / (rec.wallNs + seal.wallNs));
    }
    if (i === 0) {
      // Counted outside the timing, with a bare aggregator over the same events.
      const agg = new Aggregator();
      for (const e of evs) agg.add(validateSpendEvent(e, undefined, now));
      newRowsPerEvent = agg.heldRowCount / evs.length;
    }
    await p.close();
  }

  progress(S, `heap per aggregated row: ${plan.heapReps} x ${plan.heapEvents} events`);
  const bytesPerRow: number[] = [];
  let rowsPerRun = 0;
  for (let i = 0; i < plan.heapReps; i++) {
    // Events are generated one at a time and dropped: only what the producer keeps is counted.
    const gen = trafficGenerator(300 + i, shape, () => now);
    const p = newProducer();
    const before = heapUsed(gc);
    for (let j = 0; j < plan.heapEvents; j++) p.record(gen());
    const after = heapUsed(gc);
    rowsPerRun = p.bufferedRows;
    bytesPerRow.push((after - before) / rowsPerRun);
    await p.close();
  }

  const allIn = await measureAllIn(plan, shape, now, gc);
  const stall = await measureStall(plan, gc);
  const gateway = await measureGatewayOverhead(plan, shape, now, gc);
  return {
    typicalEvent: pool[0] as SpendEvent,
    hot: perEvent(hotRuns, plan.eventsPerRep),
    cold: perEvent(coldRuns, coldN),
    interval: {
      ...perEvent(intervalRuns, plan.intervalEvents),
      newRowsPerEvent,
      sealShare: spread(sealShares),
    },
    heap: { bytesPerRow: spread(bytesPerRow), rowsPerRun, eventsPerRun: plan.heapEvents },
    allIn,
    stall,
    gateway,
  };
}

/** Goal 1a (see ProducerCostResult.allIn). */
async function measureAllIn(
  plan: ProducerPlan,
  shape: TrafficShape,
  now: number,
  gc: () => void,
): Promise<ProducerCostResult["allIn"]> {
  const n = plan.allInEvents;
  const every = plan.allInSealEvery;
  progress(
    "producer",
    `all in, steady state: ${plan.reps} x ${n} realistic events, sealed every ${every}, jobs encoded`,
  );
  const gen = trafficGenerator(500, shape, () => now);
  // Generated before timing; the generator builds fresh id strings per event, as parsing does.
  const events = Array.from({ length: n }, gen);
  const sink = new EncodingSink();
  const p = newProducer(sink);
  const loop = async (): Promise<void> => {
    for (let i = 0; i < n; i += every) {
      const end = Math.min(n, i + every);
      for (let j = i; j < end; j++) p.record(events[j] as SpendEvent);
      await p.flush();
    }
  };
  for (let i = 0; i < plan.warmupReps; i++) await loop();
  const runs: Timed[] = [];
  let rows = 0;
  for (let i = 0; i < plan.reps; i++) {
    gc();
    const before = sink.rows;
    runs.push(await timeAsync(loop));
    rows = sink.rows - before;
  }
  await p.close();
  // Rows a steady-state interval creates per event, counted outside the timing.
  const agg = new Aggregator();
  let created = 0;
  for (let i = 0; i < n; i += every) {
    for (let j = i; j < Math.min(n, i + every); j++) {
      const e = validateSpendEvent(events[j], undefined, now);
      const before = agg.heldRowCount;
      if (!agg.addIfKnown(e)) agg.add(e);
      if (i >= n / 2) created += agg.heldRowCount - before;
    }
    agg.drain();
  }
  return {
    ...perEvent(runs, n),
    sealEvery: every,
    rowsSentPerEvent: rows / n,
    newRowsPerEvent: created / (n - Math.ceil(n / 2 / every) * every),
  };
}

/**
 * One stall rep's rows: an end user's entity and daily row per event; the
 * longest one record() call took, ms (a gateway records each request in a
 * turn of its own, so that call is how long it blocked). A function of its own: as a loop inside measureStall it made V8 compile
 * measureStall on the stack (OSR) each rep and throw the code away at the
 * next gc(), so every seal measured shared the core with that compile.
 */
function recordStallRows(p: SpendProducer, rep: number, rows: number): SlowCall[] {
  const slow: SlowCall[] = [];
  for (let i = 0; i < rows / 2; i++) {
    const t = performance.now();
    p.record({ spend: "0.000001", endUserId: `stall-${rep}-${i}`, model: "m", promptTokens: 1 });
    const d = performance.now() - t;
    if (d > 0.5) slow.push({ at: t, ms: d });
  }
  return slow;
}

interface SlowCall {
  at: number;
  ms: number;
}

/**
 * The longest calls, split: `all` as timed, and `own` counting only calls no
 * garbage collection ran in (`gcs`: start and duration, performance.now() ms).
 */
function longestCalls(
  slow: readonly SlowCall[],
  gcs: readonly { start: number; ms: number }[],
): { all: number; own: number; gcMs: number } {
  let all = 0;
  let own = 0;
  let gcMs = 0;
  for (const c of slow) {
    all = Math.max(all, c.ms);
    const gc = gcs.filter((g) => g.start < c.at + c.ms && g.start + g.ms > c.at);
    if (gc.length === 0) own = Math.max(own, c.ms);
    else
      gcMs = Math.max(
        gcMs,
        gc.reduce((s, g) => s + g.ms, 0),
      );
  }
  return { all, own, gcMs };
}

/**
 * Goal 2 (see ProducerCostResult.stall). One long-lived producer, as in a
 * gateway: each rep records plan.stallRows fresh rows (an end user's entity
 * and daily row per event), so its seal also drops the rows the rep before
 * left (idle for a whole interval), and then seals them all with the event
 * loop watched. The first STALL_WARM_SEALS seals are reported apart: a
 * process's first seals run while V8 is still compiling the seal path.
 */
async function measureStall(plan: ProducerPlan, gc: () => void): Promise<StallResult> {
  progress(
    "producer",
    `event-loop block of a seal at ${plan.stallRows} held rows: ${STALL_WARM_SEALS} warm-up + ${plan.stallReps} reps, one producer`,
  );
  const maxDelay: number[] = [];
  const maxGap: number[] = [];
  const flushMs: number[] = [];
  const onCpuMs: number[] = [];
  const firstMaxDelay: number[] = [];
  const recordMs: number[] = [];
  const recordOwnMs: number[] = [];
  const recordGcMs: number[] = [];
  let held = 0;
  const sink = new EncodingSink(true);
  const p = newProducer(sink);
  for (let rep = 0; rep < STALL_WARM_SEALS + plan.stallReps; rep++) {
    const gcs: { start: number; ms: number }[] = [];
    const gcWatch = new PerformanceObserver((l) => {
      for (const e of l.getEntries()) gcs.push({ start: e.startTime, ms: e.duration });
    });
    gcWatch.observe({ entryTypes: ["gc"] });
    const slowCalls = recordStallRows(p, rep, plan.stallRows);
    // GC entries arrive asynchronously: let the observer deliver the fill's.
    await new Promise((r) => setTimeout(r, 20));
    gcWatch.disconnect();
    const longest = longestCalls(slowCalls, gcs);
    held = p.bufferedRows;
    gc();
    const h = monitorEventLoopDelay({ resolution: 1 });
    let last = performance.now();
    let gap = 0;
    const tick = setInterval(() => {
      const t = performance.now();
      gap = Math.max(gap, t - last - 1);
      last = t;
    }, 1);
    h.enable();
    // The histogram records a delay only from its second sample on: let it take a few first.
    await new Promise((r) => setTimeout(r, 10));
    // From here on only the seal and send count: the forced gc()'s sweeping, which
    // the wait above absorbs, is the harness's own.
    h.reset();
    last = performance.now();
    gap = 0;
    const t0 = performance.now();
    const c0 = mainThreadOnCpuMs();
    await p.flush();
    const t1 = performance.now();
    const c1 = mainThreadOnCpuMs();
    await new Promise((r) => setTimeout(r, 5));
    h.disable();
    clearInterval(tick);
    if (rep < STALL_WARM_SEALS) {
      firstMaxDelay.push(h.max / 1e6);
      continue;
    }
    recordMs.push(longest.all);
    recordOwnMs.push(longest.own);
    recordGcMs.push(longest.gcMs);
    flushMs.push(t1 - t0);
    if (c0 !== undefined && c1 !== undefined) onCpuMs.push(c1 - c0);
    maxDelay.push(h.max / 1e6);
    maxGap.push(gap);
  }
  await p.close();
  return {
    heldRows: held,
    maxDelayMs: spread(maxDelay),
    maxGapMs: spread(maxGap),
    flushMs: spread(flushMs),
    flushOnCpuMs: onCpuMs.length > 0 ? spread(onCpuMs) : null,
    firstSealsMaxDelayMs: firstMaxDelay,
    longestRecordMs: spread(recordMs),
    longestRecordNoGcMs: spread(recordOwnMs),
    recordGcPauseMs: spread(recordGcMs),
  };
}

// ---------------------------------------------------------------------------
// Reference workload: what a gateway does to every request at the very least.

interface ChatRequest {
  model: string;
  messages: { role: string; content: string }[];
  user?: string;
}

interface ChatResponse {
  model: string;
  usage: {
    prompt_tokens: number;
    completion_tokens: number;
    prompt_tokens_details?: { cached_tokens?: number };
  };
}

const WORDS =
  "the quarterly report shows revenue growth across regions while operating costs remained flat and the team expects margins to improve next year as new contracts ramp up".split(
    " ",
  );

function text(words: number, seed: number): string {
  const out: string[] = [];
  for (let i = 0; i < words; i++) out.push(WORDS[(i * 7 + seed) % WORDS.length] ?? "x");
  return out.join(" ");
}

/** A typical OpenAI chat completion exchange: a short conversation and a medium answer. */
export function referenceExchange(): { request: string; response: string } {
  const request = {
    model: "gpt-4o",
    messages: [
      { role: "system", content: text(40, 1) },
      { role: "user", content: text(90, 2) },
      { role: "assistant", content: text(70, 3) },
      { role: "user", content: text(40, 4) },
    ],
    temperature: 0.2,
    max_tokens: 512,
    stream: false,
    user: "end-user-42",
    metadata: { tags: ["env:prod", "feature:search"] },
  };
  const response = {
    id: "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT",
    object: "chat.completion",
    created: 1_741_569_952,
    model: "gpt-4o-2024-08-06",
    system_fingerprint: "fp_50cad350e4",
    choices: [
      {
        index: 0,
        message: { role: "assistant", content: text(180, 5), refusal: null, annotations: [] },
        logprobs: null,
        finish_reason: "stop",
      },
    ],
    usage: {
      prompt_tokens: 412,
      completion_tokens: 231,
      total_tokens: 643,
      prompt_tokens_details: { cached_tokens: 128, audio_tokens: 0 },
      completion_tokens_details: {
        reasoning_tokens: 0,
        audio_tokens: 0,
        accepted_prediction_tokens: 0,
        rejected_prediction_tokens: 0,
      },
    },
    service_tier: "default",
  };
  return { request: JSON.stringify(request), response: JSON.stringify(response) };
}

/**
 * One simulated request: parse the client's body, serialise it upstream,
 * parse the provider's answer, serialise it back. With `producer`, the
 * gateway also builds the spend event from the usage and records it.
 */
function gatewayLoop(
  requestText: string,
  responseText: string,
  n: number,
  ids: readonly SpendEvent[],
  producer: SpendProducer | undefined,
): number {
  let bytes = 0;
  for (let i = 0; i < n; i++) {
    const start = Date.now();
    const req = JSON.parse(requestText) as ChatRequest;
    bytes += JSON.stringify(req).length;
    const res = JSON.parse(responseText) as ChatResponse;
    bytes += JSON.stringify(res).length;
    if (producer !== undefined) {
      const id = ids[i % ids.length] as SpendEvent;
      const u = res.usage;
      producer.record({
        spend: u.prompt_tokens * 0.0000025 + u.completion_tokens * 0.00001,
        apiKey: id.apiKey,
        userId: id.userId,
        teamId: id.teamId,
        organizationId: id.organizationId,
        endUserId: id.endUserId,
        tags: id.tags,
        model: id.model,
        modelGroup: id.modelGroup,
        provider: id.provider,
        endpoint: "/v1/chat/completions",
        promptTokens: u.prompt_tokens,
        completionTokens: u.completion_tokens,
        cacheReadInputTokens: u.prompt_tokens_details?.cached_tokens ?? 0,
        success: true,
        startTime: start,
      });
    }
  }
  return bytes;
}

async function measureGatewayOverhead(
  plan: ProducerPlan,
  shape: TrafficShape,
  now: number,
  gc: () => void,
): Promise<GatewayOverhead> {
  const { request, response } = referenceExchange();
  const n = plan.gatewayRequests;
  progress(
    "producer",
    `reference workload (JSON ${request.length} B request + ${response.length} B response), recording off/on: ${plan.gatewayReps} reps`,
  );
  const hotIds = typicalEvents(plan.hotPool, 11, shape, now);
  const hotProducer = newProducer();
  for (const e of hotIds) hotProducer.record(e);

  let sinkBytes = 0;
  const off = (): Timed => {
    gc();
    return timeSync(() => (sinkBytes += gatewayLoop(request, response, n, [], undefined)));
  };
  const hot = (): Timed => {
    gc();
    return timeSync(() => (sinkBytes += gatewayLoop(request, response, n, hotIds, hotProducer)));
  };
  const interval = async (rep: number): Promise<Timed> => {
    const ids = typicalEvents(n, 400 + rep, shape, now);
    const p = newProducer();
    gc();
    const rec = timeSync(() => (sinkBytes += gatewayLoop(request, response, n, ids, p)));
    const seal = await timeAsync(() => p.flush());
    await p.close();
    return { wallNs: rec.wallNs + seal.wallNs, cpuNs: rec.cpuNs + seal.cpuNs };
  };

  for (let i = 0; i < plan.warmupReps; i++) {
    off();
    hot();
    await interval(-1 - i);
  }
  const offNs: number[] = [];
  const offCpu: number[] = [];
  const hotPct: number[] = [];
  const hotPctCpu: number[] = [];
  const intervalPct: number[] = [];
  const intervalPctCpu: number[] = [];
  for (let rep = 0; rep < plan.gatewayReps; rep++) {
    // The order rotates so slow drift in machine load does not favour one variant.
    let o: Timed | undefined;
    let h: Timed | undefined;
    let v: Timed | undefined;
    for (let k = 0; k < 3; k++) {
      const which = (rep + k) % 3;
      if (which === 0) o = off();
      else if (which === 1) h = hot();
      else v = await interval(rep);
    }
    if (o === undefined || h === undefined || v === undefined) throw new Error("unreachable");
    offNs.push(o.wallNs / n);
    offCpu.push(o.cpuNs / n);
    hotPct.push((100 * (h.wallNs - o.wallNs)) / o.wallNs);
    hotPctCpu.push((100 * (h.cpuNs - o.cpuNs)) / o.cpuNs);
    intervalPct.push((100 * (v.wallNs - o.wallNs)) / o.wallNs);
    intervalPctCpu.push((100 * (v.cpuNs - o.cpuNs)) / o.cpuNs);
  }
  await hotProducer.close();
  if (sinkBytes === 0) throw new Error("reference workload produced nothing");
  return {
    description:
      "JSON.parse + JSON.stringify of a typical OpenAI chat request and response per simulated request; 'on' also builds the spend event from the usage and calls record()",
    requestBytes: request.length,
    responseBytes: response.length,
    offWallNs: spread(offNs),
    offCpuNs: spread(offCpu),
    hotAddedPct: spread(hotPct),
    hotAddedPctCpu: spread(hotPctCpu),
    intervalAddedPct: spread(intervalPct),
    intervalAddedPctCpu: spread(intervalPctCpu),
    requestsPerRep: n,
  };
}

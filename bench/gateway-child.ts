/**
 * The reference gateway for section 1's recording on/off comparison: the
 * Express app the gateway service runs (src/gateway/app.ts), in its own
 * process pinned to one core (bench/pinned.ts), with the real producer and
 * its real sink (Redis, under the run's prefix). The IPC messages "on" and
 * "off" switch recording while it runs (RECORDING sets the start);
 * everything else (key auth through the key cache, body parsing, pricing,
 * the mock model, the response) is the same code either way. Prints
 * {"port"} once listening; answers "cpu" with its process.cpuUsage(), and
 * "seal" once what it holds is sealed and sent.
 *
 * "profile" turns on the breakdown the parent reads after its timed reps:
 * the CPU of the producer's batches (validating and aggregating served
 * events), of its seals, and of each seal-and-send, and the main thread's GC
 * pauses. Off until then, so the timed reps run the producer unwrapped.
 *
 * The producer's seal timer is off: the parent seals at the end of each rep,
 * and a rep lasts one mean seal interval, so each request carries the share
 * of one seal a gateway's requests carry. With the timer on as well, a rep
 * held its timer's seal too (one per interval, whatever the rep does): two
 * seals per interval, each draining and sending the rows touched on both
 * sides of it.
 *
 * BUDGETS=1 (the budgets section): the gateway also enforces every budget the
 * parent defined, through the product's BudgetBook, switched on and off by
 * the IPC messages "budgets:on" and "budgets:off".
 */
import type { AddressInfo } from "node:net";
import { constants, monitorEventLoopDelay, PerformanceObserver } from "node:perf_hooks";
import type { BudgetBook } from "../src/budget/budget-book.js";
import type { BudgetGuard, BudgetRefusal, ChargeList } from "../src/budget/budget-guard.js";
import { createGatewayApp } from "../src/gateway/app.js";
import { gatewayBudgetBook } from "../src/gateway/gateway-budgets.js";
import { QueueSink } from "../src/queue/queue-sink.js";
import { createSpendProducer } from "../src/wiring/create-producer.js";
import { KeyCache } from "../src/gateway/virtual-keys.js";
import { silentLogger } from "../src/observe/logger.js";
import { SpendMetrics } from "../src/observe/metrics.js";
import { createDb } from "../src/persist/prisma.js";
import { BufferFullError, SpendProducer } from "../src/produce/producer.js";
import type { SpendEvent } from "../src/produce/spend-event.js";
import { gatewayConfig } from "./gateway-traffic.js";

class SwitchedProducer extends SpendProducer {
  recording = true;
  /** flush() calls: the parent's seals, and any other (which would make its figure wrong). */
  flushes = 0;
  override flush(): Promise<void> {
    this.flushes++;
    return super.flush();
  }
  // Off: the request path is otherwise identical. Every way in is switched:
  // the gateway records through recordServed().
  override record(event: SpendEvent): void {
    if (this.recording) super.record(event);
  }
  override recordServed(event: SpendEvent): void {
    if (this.recording) super.recordServed(event);
  }
}

/** Wall-clock ns of each call, the most recent `size` of them. */
class Timings {
  private readonly ns: Float64Array;
  private n = 0;
  constructor(size: number) {
    this.ns = new Float64Array(size);
  }
  add(ns: number): void {
    this.ns[this.n++ % this.ns.length] = ns;
  }
  /** The median of what was added since the last take (0: none), and starts over. */
  take(): number {
    const got = this.ns.slice(0, Math.min(this.n, this.ns.length)).sort();
    this.n = 0;
    return got.length === 0 ? 0 : (got[got.length >> 1] as number);
  }
}

/**
 * Budget enforcement that can be switched off while the gateway runs
 * (BUDGETS=1; the budgets section's gateway figure): off, it enforces
 * nothing and the request path skips it as it does with no budget defined.
 * Each call is timed where the gateway makes it, on or off: the per-request
 * figure the section reports (its whole-process CPU difference only
 * resolves a few µs).
 */
class SwitchedBudgets implements BudgetGuard {
  on = false;
  readonly checks = new Timings(1 << 16);
  readonly charges = new Timings(1 << 16);
  constructor(readonly book: BudgetBook) {}
  get size(): number {
    return this.on ? this.book.size : 0;
  }
  check(list: ChargeList, now?: number): BudgetRefusal | undefined {
    const t0 = process.hrtime.bigint();
    const refused = this.on ? this.book.check(list, now) : undefined;
    this.checks.add(Number(process.hrtime.bigint() - t0));
    return refused;
  }
  charge(list: ChargeList, costPico: bigint, now?: number): void {
    const t0 = process.hrtime.bigint();
    if (this.on) this.book.charge(list, costPico, now);
    this.charges.add(Number(process.hrtime.bigint() - t0));
  }
  refresh(): Promise<void> {
    return this.book.refresh();
  }
}

/** The breakdown's running totals, in CPU microseconds of this process. */
const profile = { batchUs: 0, sealUs: 0, sealAndSendUs: 0, gcPauseUs: 0, gcMinorUs: 0 };
let profiling = false;

function cpuUs(since: NodeJS.CpuUsage): number {
  const d = process.cpuUsage(since);
  return d.user + d.system;
}

/**
 * Wraps the producer's batch and seal (private: a bench patches them at run
 * time rather than give the product a hook) and observes GC pauses.
 */
function startProfiling(): void {
  if (profiling) return;
  profiling = true;
  const proto = SpendProducer.prototype as unknown as Record<
    string,
    (this: unknown, ...args: unknown[]) => unknown
  >;
  const method = (name: string): ((this: unknown, ...args: unknown[]) => unknown) => {
    const f = proto[name];
    if (typeof f !== "function") throw new Error(`SpendProducer has no method ${name}`);
    return f;
  };
  const settle = method("settleServed");
  const seal = method("seal");
  const complete = method("complete");
  const timed = (
    f: (this: unknown, ...args: unknown[]) => unknown,
    self: unknown,
    add: (us: number) => void,
  ): void => {
    const t0 = process.cpuUsage();
    try {
      f.call(self);
    } finally {
      add(cpuUs(t0));
    }
  };
  proto.settleServed = function (this: unknown): void {
    timed(settle, this, (us) => (profile.batchUs += us));
  };
  proto.seal = function (this: unknown): unknown {
    // A seal first settles the served events still queued: batch work, timed as such.
    proto.settleServed?.call(this);
    return seal.call(this);
  };
  // A seal drains in slices across turns of the event loop (other requests run between
  // them): its own work is the sum of its slices, which it keeps, read when it completes.
  proto.complete = function (this: unknown, ...args: unknown[]): unknown {
    const d = args[0] as { busyMs: number };
    profile.sealUs += d.busyMs * 1000;
    return complete.apply(this, args);
  };
  new PerformanceObserver((list) => {
    for (const e of list.getEntries()) {
      profile.gcPauseUs += e.duration * 1000;
      // Scavenges apart: what the young generation's survivors cost.
      if (
        (e as { detail?: { kind?: number } }).detail?.kind === constants.NODE_PERFORMANCE_GC_MINOR
      )
        profile.gcMinorUs += e.duration * 1000;
    }
  }).observe({ entryTypes: ["gc"] });
}

const recording = process.env.RECORDING === "on";
const config = gatewayConfig(process.env.PREFIX ?? "", process.env.DATABASE_URL ?? "");
const db = createDb(config.databaseUrl, { max: 2 });
const metrics = new SpendMetrics();
// The longest timeout Node takes: the timer never fires in a run (see above).
const NO_TIMER_MS = 2 ** 31 - 1;
// Wired as a gateway wires it, the switchable subclass in place of the plain one.
const producer = await createSpendProducer(config, {
  metrics,
  logger: silentLogger,
  construct: (options) => new SwitchedProducer(options),
  // The stall reps hold 200k rows (goal 2): a bound above them, so the gateway does not
  // answer them 503 buffer_full meanwhile (rows kept from earlier reps count towards it too).
  options: { flushIntervalMs: NO_TIMER_MS, flushJitterMs: 0, maxBufferedRows: 1_000_000 },
});
producer.recording = recording;
const queues = producer.sink instanceof QueueSink ? producer.sink.queues : [];
const redis = queues[0]?.connection;
let budgets: SwitchedBudgets | undefined;
if (process.env.BUDGETS === "1" && redis !== undefined) {
  // Wired as the gateway service wires it; every budget the parent defined is loaded and leased at start.
  const book = gatewayBudgetBook(config, {
    db,
    redis,
    queues,
    producer,
    metrics,
    logger: silentLogger,
  });
  await book.start();
  budgets = new SwitchedBudgets(book);
}
const app = createGatewayApp({
  config,
  producer,
  keys: new KeyCache(db, config.gateway.keyCacheTtlMs, config.gateway.keyCacheMaxEntries),
  db,
  metrics,
  logger: silentLogger,
  checks: {},
  draining: () => false,
  ...(budgets !== undefined ? { budgets, queues } : {}),
});
const server = app.listen(0, "127.0.0.1", () => {
  process.stdout.write(`${JSON.stringify({ port: (server.address() as AddressInfo).port })}\n`);
});
server.keepAliveTimeout = 60_000;

/** The event loop's delay since "eld-start" (issue 22, goal 2: seals must not stall it). */
let eld: ReturnType<typeof monitorEventLoopDelay> | undefined;
/** The longest garbage collection pause since "eld-start", ms: what a loop delay is made of. */
let gcMaxMs = 0;
new PerformanceObserver((list) => {
  for (const e of list.getEntries()) gcMaxMs = Math.max(gcMaxMs, e.duration);
}).observe({ entryTypes: ["gc"] });

process.on("message", (m) => {
  if (typeof m === "string" && m.startsWith("preload:")) {
    // Rows pending before a stall rep: each event adds an end user's entity and daily row.
    const rows = Number(m.slice("preload:".length));
    const was = producer.recording;
    producer.recording = true;
    const run = Date.now();
    try {
      for (let i = 0; i < rows / 2; i++)
        producer.record({ spend: "0.000001", endUserId: `preload-${run}-${i}`, model: "m" });
    } catch (err) {
      // At the bound (rows kept from earlier reps count too): held as many as it takes.
      if (!(err instanceof BufferFullError)) throw err;
    }
    producer.recording = was;
    process.send?.({ bufferedRows: producer.bufferedRows });
    return;
  }
  if (m === "eld-start") {
    eld?.disable();
    eld = monitorEventLoopDelay({ resolution: 1 });
    eld.enable();
    gcMaxMs = 0;
    process.send?.({ started: true });
    return;
  }
  if (m === "eld") {
    eld?.disable();
    process.send?.({
      maxMs: (eld?.max ?? 0) / 1e6,
      p99Ms: (eld?.percentile(99) ?? 0) / 1e6,
      gcMaxMs,
    });
    return;
  }
  if (m === "budgets:on" || m === "budgets:off") {
    if (budgets !== undefined) budgets.on = m === "budgets:on";
    // Timings start with the mode.
    budgets?.checks.take();
    budgets?.charges.take();
    process.send?.({ budgets: budgets?.on ?? false, enforced: budgets?.book.size ?? 0 });
    return;
  }
  if (m === "budgets:timings") {
    process.send?.({
      checkNs: budgets?.checks.take() ?? 0,
      chargeNs: budgets?.charges.take() ?? 0,
    });
    return;
  }
  // Rows held tell the parent that "off" really records nothing.
  if (m === "cpu")
    process.send?.({
      ...process.cpuUsage(),
      bufferedRows: producer.bufferedRows,
      flushes: producer.flushes,
      profile: { ...profile },
    });
  else if (m === "on" || m === "off") {
    producer.recording = m === "on";
    process.send?.({ recording: producer.recording });
  } else if (m === "profile") {
    startProfiling();
    process.send?.({ profiling });
  } else if (m === "seal") {
    const t0 = process.cpuUsage();
    void producer
      .flush()
      .then(() => {
        if (profiling) profile.sealAndSendUs += cpuUs(t0);
        process.send?.({ sealed: true });
      })
      .catch((err: unknown) => process.send?.({ sealed: false, error: String(err) }));
  } else if (m === "stop") {
    server.close();
    server.closeAllConnections();
    void producer
      .close()
      .catch(() => undefined)
      .finally(() => {
        void db.$disconnect().finally(() => process.disconnect?.());
      });
  }
});

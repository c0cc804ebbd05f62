/**
 * Section 1, against the reference gateway: CPU time per request of the real
 * gateway app (bench/gateway-child.ts) with recording on and off, the same
 * requests driven over HTTP from this process. Each child measures its own
 * CPU (process.cpuUsage), so the client's work is not counted; both run side by
 * side on one core, swapping roles each rep. Each rep gives one ratio, and
 * each two reps (each process recording in one) one figure: their mean. A few
 * reps with neither recording give the harness's resolution, and a few last
 * ones, with the recording gateway's batches, seals and sends timed, show
 * where recording's CPU goes.
 */
import http from "node:http";
import { performance } from "node:perf_hooks";
import type { TrafficShape } from "../src/demo/traffic.js";
import {
  createGatewayKeys,
  gatewayConfig,
  gatewayRequests,
  meanSealIntervalMs,
  type GatewayRequest,
} from "./gateway-traffic.js";
import { ask, spawnPinned, type PinnedChild } from "./pinned.js";
import type { GatewayPlan } from "./plan.js";
import { referenceExchange } from "./producer-cost.js";
import type { Resources } from "./resources.js";
import { progress, quantile, sleep, spread, type Spread } from "./util.js";

export interface GatewayOverheadResult {
  description: string;
  keys: number;
  /** Requests each gateway served per rep: about one mean seal interval's worth (full runs). */
  requestsPerRep: number;
  /** The gateway producer's mean seal interval (interval + half the jitter), ms. */
  sealIntervalMs: number;
  /** Whether requestsPerRep was sized to sealIntervalMs (else fixed by the plan). */
  repSpansSealInterval: boolean;
  concurrency: number;
  pinnedCpu: number | null;
  /** Gateway CPU per request, microseconds. */
  offCpuUs: Spread;
  onCpuUs: Spread;
  /**
   * CPU per request added by recording, percent of "off": one value per two
   * consecutive reps (the mean of their ratios), in which each process
   * recorded once. A fixed difference between the two processes cancels in
   * it; in a single rep's ratio it counts for or against recording.
   */
  addedPct: Spread;
  /** Each rep's own ratio, recording process alternating. */
  addedPctByRep: Spread;
  /**
   * CPU per request added by recording, absolute µs (issue 22, goal 1b): one
   * value per two consecutive reps, as addedPct.
   */
  addedUs: Spread;
  /** addedPct with neither gateway recording: the harness's resolution (~0 if it is sound). */
  nullPct: Spread;
  /** Each null rep's own ratio: half their difference is what the two processes differ by. */
  nullPctByRep: Spread;
  /** Requests per second the client saw (wall). */
  offRps: Spread;
  onRps: Spread;
  breakdown: RecordingBreakdown;
  /** Issue 22, goal 2: a seal of many held rows during traffic. */
  stall: GatewayStall;
}

/**
 * Reps in which the recording gateway holds `heldRows` pending rows (recorded
 * straight into its producer before the rep) and seals them half way through
 * its requests; each gateway serves the same requests alone on the core, one
 * after the other: the client's request latency, p99, on vs off, and each
 * gateway's longest event-loop delay (monitorEventLoopDelay, 1 ms resolution).
 */
export interface GatewayStall {
  reps: number;
  /** Requests each gateway served per rep. */
  requests: number;
  heldRows: number;
  onP99Ms: Spread;
  offP99Ms: Spread;
  /** p99 latency on / off per rep, minus 1, percent. */
  p99AddedPct: Spread;
  onMaxDelayMs: Spread;
  offMaxDelayMs: Spread;
  /** The longest single garbage collection pause in each rep, ms. */
  onMaxGcMs: Spread;
  offMaxGcMs: Spread;
}

type Mode = "on" | "off";

interface Gateway {
  c: PinnedChild;
  port: number;
}

interface Profile {
  batchUs: number;
  sealUs: number;
  sealAndSendUs: number;
  gcPauseUs: number;
  gcMinorUs: number;
}

interface CpuUsage {
  user: number;
  system: number;
  bufferedRows: number;
  flushes: number;
  /** Zero until the child is told to profile (after the timed reps). */
  profile: Profile;
}

/**
 * Where recording's CPU goes, per request, from reps run after the timed
 * ones with the recording gateway's batches and seals wrapped in CPU timers
 * (gateway-child.ts): not part of the figure above.
 */
export interface RecordingBreakdown {
  reps: number;
  /** The gateway not recording, CPU per request in these reps, µs. */
  offCpuUs: Spread;
  /** Recording's added CPU per request in these reps (on - off), µs. */
  addedUs: Spread;
  /** Validating and aggregating served events, in batches. */
  batchUs: Spread;
  /** Sealing: draining the aggregate into rows and splitting them into jobs. */
  sealUs: Spread;
  /** Sending the sealed jobs (BullMQ add: JSON, Redis), until Redis acknowledged them. */
  sendUs: Spread;
  /** Main-thread GC pauses of the recording gateway minus the other's. */
  gcPauseAddedUs: Spread;
  /** Of which scavenges (young generation). */
  gcMinorAddedUs: Spread;
}

export async function measureGatewayOverhead(
  plan: GatewayPlan,
  shape: TrafficShape,
  res: Resources,
): Promise<GatewayOverheadResult> {
  const S = "producer";
  const t = await res.database("gateway");
  const prefix = res.prefix("gateway");
  const children: PinnedChild[] = [];
  try {
    progress(S, `reference gateway: ${plan.keys} virtual keys`);
    const keys = (await createGatewayKeys(t.db, plan.keys, shape)).map((k) => k.key);
    const requests = gatewayRequests(
      plan.distinctRequests,
      7,
      shape,
      keys,
      referenceExchange().request,
    );
    const gateways: Gateway[] = [];
    for (const mode of ["on", "off"] as const) {
      const c = spawnPinned("gateway-child.ts", {
        RECORDING: mode,
        PREFIX: prefix,
        DATABASE_URL: t.url,
      });
      children.push(c);
      gateways.push({ c, port: await waitForPort(c) });
    }
    /**
     * Both gateways at once, the same requests, on the same core: whatever
     * else the machine does then (GC elsewhere, the client, noisy
     * neighbours) hits both alike, and the ratio of their CPU cancels it.
     * The two processes swap roles every pair: with fixed roles, two gateways
     * both recording off differed by ~1 % (the first one started cost more),
     * a bias recording would have been charged with.
     */
    const drivePair = async (
      n: number,
      on: Gateway,
      off: Gateway,
      record = true,
    ): Promise<Record<Mode, { cpuUs: number; rps: number; profile: Profile }>> => {
      await Promise.all([ask(on.c.child, record ? "on" : "off"), ask(off.c.child, "off")]);
      const [on0, off0] = await Promise.all([
        ask<CpuUsage>(on.c.child, "cpu"),
        ask<CpuUsage>(off.c.child, "cpu"),
      ]);
      const timed = async (port: number): Promise<number> => {
        const t0 = process.hrtime.bigint();
        await sendAll(port, requests, n, plan.concurrency);
        return Number(process.hrtime.bigint() - t0) / 1e9;
      };
      const [onWall, offWall] = await Promise.all([timed(on.port), timed(off.port)]);
      // What the pair recorded is sealed and sent on its CPU, before the roles swap: the
      // only seal (the child's timer is off), as one a gateway makes each interval.
      const sealed = await ask<{ sealed: boolean; error?: string }>(on.c.child, "seal");
      if (!sealed.sealed) throw new Error(`gateway seal failed: ${sealed.error ?? "?"}`);
      const [on1, off1] = await Promise.all([
        ask<CpuUsage>(on.c.child, "cpu"),
        ask<CpuUsage>(off.c.child, "cpu"),
      ]);
      // A way into the producer the switch misses would make the "off" copy record too.
      if (off1.bufferedRows !== 0)
        throw new Error(`the recording-off gateway holds ${off1.bufferedRows} spend rows`);
      // One seal per rep, the harness's: a gateway's requests carry one per interval.
      if (on1.flushes - on0.flushes !== 1)
        throw new Error(`the recording gateway sealed ${on1.flushes - on0.flushes} times in a rep`);
      const us = (a: CpuUsage, b: CpuUsage): number => (b.user + b.system - a.user - a.system) / n;
      const perRequest = (a: CpuUsage, b: CpuUsage): Profile => ({
        batchUs: (b.profile.batchUs - a.profile.batchUs) / n,
        sealUs: (b.profile.sealUs - a.profile.sealUs) / n,
        sealAndSendUs: (b.profile.sealAndSendUs - a.profile.sealAndSendUs) / n,
        gcPauseUs: (b.profile.gcPauseUs - a.profile.gcPauseUs) / n,
        gcMinorUs: (b.profile.gcMinorUs - a.profile.gcMinorUs) / n,
      });
      return {
        on: { cpuUs: us(on0, on1), rps: n / onWall, profile: perRequest(on0, on1) },
        off: { cpuUs: us(off0, off1), rps: n / offWall, profile: perRequest(off0, off1) },
      };
    };
    const [a, b] = gateways as [Gateway, Gateway];
    /** Rep k's recording and other gateway: the two processes swap roles every rep. */
    const roles = (rep: number): [Gateway, Gateway] => (rep % 2 === 0 ? [a, b] : [b, a]);
    progress(S, `reference gateway: warm-up, ${plan.warmupRequests} requests per mode`);
    // Every key cached, every code path optimised in both roles, before anything is timed.
    await drivePair(plan.warmupRequests, a, b);
    const warm = await drivePair(plan.warmupRequests, b, a);

    /*
     * The recording gateway seals once, at the end of each rep, so a rep should
     * last as long as the time between two of its timer's seals in a gateway:
     * shorter reps charged each request a larger share of a seal than a
     * gateway pays (10k requests took ~3.5 s here, a quarter of the 12.5 s
     * mean interval, and the figure fell from 4.4 % to 2.8 % with reps of a
     * mean interval). The rate is the one the gateways reach side by side, as
     * they will in the reps.
     */
    const sealIntervalMs = meanSealIntervalMs(gatewayConfig(prefix, t.url));
    const warmRps = (warm.on.rps + warm.off.rps) / 2;
    // One interval's requests, however short the interval: a longer rep would
    // carry one seal for several intervals' requests and under-count sealing.
    const requestsPerRep = plan.repSpansSealInterval
      ? Math.max(1_000, Math.round((warmRps * sealIntervalMs) / 1000))
      : plan.requestsPerRep;
    progress(
      S,
      `reference gateway: ${plan.reps} reps x ${requestsPerRep} requests (${plan.repSpansSealInterval ? `one mean seal interval, ${sealIntervalMs / 1000} s, at ${Math.round(warmRps)} req/s` : "fixed"}), recording on and off side by side, roles swapped each rep`,
    );
    const off: number[] = [];
    const on: number[] = [];
    const added: number[] = [];
    const addedUsByRep: number[] = [];
    const offRps: number[] = [];
    const onRps: number[] = [];
    for (let rep = 0; rep < plan.reps; rep++) {
      const got = await drivePair(requestsPerRep, ...roles(rep));
      off.push(got.off.cpuUs);
      on.push(got.on.cpuUs);
      offRps.push(got.off.rps);
      onRps.push(got.on.rps);
      added.push((100 * (got.on.cpuUs - got.off.cpuUs)) / got.off.cpuUs);
      addedUsByRep.push(got.on.cpuUs - got.off.cpuUs);
    }
    // The harness's own resolution: the same pairs with neither gateway recording.
    const nullPct: number[] = [];
    for (let rep = 0; rep < plan.nullReps; rep++) {
      const got = await drivePair(requestsPerRep, ...roles(rep), false);
      nullPct.push((100 * (got.on.cpuUs - got.off.cpuUs)) / got.off.cpuUs);
    }
    // The breakdown, last: its timers must not touch the reps above.
    progress(S, `reference gateway: ${plan.profileReps} reps with recording's parts timed`);
    await Promise.all(gateways.map((g) => ask(g.c.child, "profile")));
    const offUs: number[] = [];
    const addedUs: number[] = [];
    const batchUs: number[] = [];
    const sealUs: number[] = [];
    const sendUs: number[] = [];
    const gcAdded: number[] = [];
    const gcMinorAdded: number[] = [];
    for (let rep = 0; rep < plan.profileReps; rep++) {
      const got = await drivePair(requestsPerRep, ...roles(rep));
      const p = got.on.profile;
      offUs.push(got.off.cpuUs);
      addedUs.push(got.on.cpuUs - got.off.cpuUs);
      batchUs.push(p.batchUs);
      sealUs.push(p.sealUs);
      sendUs.push(p.sealAndSendUs - p.sealUs);
      gcAdded.push(p.gcPauseUs - got.off.profile.gcPauseUs);
      gcMinorAdded.push(p.gcMinorUs - got.off.profile.gcMinorUs);
    }
    // Goal 2: a seal of plan.stallRows rows half way through a rep, latency on vs off.
    progress(
      S,
      `reference gateway: ${plan.stallReps} reps of ${plan.stallRequests} requests sealing ${plan.stallRows} held rows mid-rep, request latency on vs off, one gateway at a time`,
    );
    const stallOn: number[] = [];
    const stallOff: number[] = [];
    const stallAdded: number[] = [];
    const eldOn: number[] = [];
    const eldOff: number[] = [];
    let stallHeld = 0;
    /*
     * One gateway at a time, alone on the pinned core: side by side, each
     * one's latency held the other's CPU time (the scheduler's slices on a
     * shared core), so the "off" gateway's event loop was delayed up to 50 ms
     * and the p99 ratio moved between -43 % and +40 % from rep to rep. The
     * recording one seals once half its requests are answered.
     */
    const gcOn: number[] = [];
    const gcOff: number[] = [];
    const stallRun = async (
      g: Gateway,
      recording: boolean,
      lat: number[],
    ): Promise<{ maxMs: number; gcMaxMs: number }> => {
      if (recording)
        stallHeld = (await ask<{ bufferedRows: number }>(g.c.child, `preload:${plan.stallRows}`))
          .bufferedRows;
      await ask(g.c.child, "eld-start");
      let sealed: Promise<{ sealed: boolean; error?: string }> | undefined;
      const half = setInterval(() => {
        if (!recording || sealed !== undefined || lat.length < plan.stallRequests / 2) return;
        sealed = ask<{ sealed: boolean; error?: string }>(g.c.child, "seal");
      }, 2);
      try {
        await sendAll(g.port, requests, plan.stallRequests, plan.concurrency, lat);
      } finally {
        clearInterval(half);
      }
      if (recording) {
        const s = await (sealed ?? Promise.resolve({ sealed: false, error: "never sealed" }));
        if (!s.sealed) throw new Error(`gateway seal failed: ${s.error ?? "?"}`);
        // What the rep itself recorded after the seal, out of the way of the next rep.
        await ask(g.c.child, "seal");
      }
      return ask<{ maxMs: number; gcMaxMs: number }>(g.c.child, "eld");
    };
    for (let rep = 0; rep < plan.stallReps; rep++) {
      const [on, off] = roles(rep);
      await Promise.all([ask(on.c.child, "on"), ask(off.c.child, "off")]);
      const latOn: number[] = [];
      const latOff: number[] = [];
      // Which goes first alternates too, so drift over a rep pair cancels.
      let eOn: { maxMs: number; gcMaxMs: number };
      let eOff: { maxMs: number; gcMaxMs: number };
      if (rep % 4 < 2) {
        eOn = await stallRun(on, true, latOn);
        eOff = await stallRun(off, false, latOff);
      } else {
        eOff = await stallRun(off, false, latOff);
        eOn = await stallRun(on, true, latOn);
      }
      const pOn = quantile(latOn, 0.99);
      const pOff = quantile(latOff, 0.99);
      stallOn.push(pOn);
      stallOff.push(pOff);
      stallAdded.push(100 * (pOn / pOff - 1));
      eldOn.push(eOn.maxMs);
      eldOff.push(eOff.maxMs);
      gcOn.push(eOn.gcMaxMs);
      gcOff.push(eOff.gcMaxMs);
    }
    // Reps 2k and 2k+1 swapped roles: their mean cancels what process a costs more than b.
    const balanced = (byRep: number[]): number[] => {
      const out: number[] = [];
      for (let k = 0; k + 1 < byRep.length; k += 2)
        out.push(((byRep[k] as number) + (byRep[k + 1] as number)) / 2);
      return out;
    };
    return {
      description:
        "POST /v1/chat/completions to the gateway app (key auth via the key cache, JSON body, pricing, mock model, JSON response) over keep-alive HTTP; 'on' records each request through the producer into Redis (and seals what it holds at the end of the rep), 'off' skips recording; the two gateway processes swap roles every rep",
      keys: plan.keys,
      requestsPerRep,
      sealIntervalMs,
      repSpansSealInterval: plan.repSpansSealInterval,
      concurrency: plan.concurrency,
      pinnedCpu: children[0]?.cpu ?? null,
      offCpuUs: spread(off),
      onCpuUs: spread(on),
      addedPct: spread(balanced(added)),
      addedPctByRep: spread(added),
      addedUs: spread(balanced(addedUsByRep)),
      nullPct: spread(balanced(nullPct)),
      nullPctByRep: spread(nullPct),
      offRps: spread(offRps),
      onRps: spread(onRps),
      breakdown: {
        reps: plan.profileReps,
        offCpuUs: spread(offUs),
        addedUs: spread(addedUs),
        batchUs: spread(batchUs),
        sealUs: spread(sealUs),
        sendUs: spread(sendUs),
        gcPauseAddedUs: spread(gcAdded),
        gcMinorAddedUs: spread(gcMinorAdded),
      },
      stall: {
        reps: plan.stallReps,
        requests: plan.stallRequests,
        heldRows: stallHeld,
        onP99Ms: spread(stallOn),
        offP99Ms: spread(stallOff),
        p99AddedPct: spread(stallAdded),
        onMaxDelayMs: spread(eldOn),
        offMaxDelayMs: spread(eldOff),
        onMaxGcMs: spread(gcOn),
        offMaxGcMs: spread(gcOff),
      },
    };
  } finally {
    await Promise.all(children.map((c) => stopChild(c)));
    await res.cleanPrefix(prefix);
    await res.dropDatabase(t);
  }
}

export async function waitForPort(c: PinnedChild): Promise<number> {
  const deadline = Date.now() + 30_000;
  for (;;) {
    const line = c.stdout().split("\n")[0] ?? "";
    if (line.endsWith("}")) return (JSON.parse(line) as { port: number }).port;
    if (c.child.exitCode !== null) throw new Error("gateway child exited before listening");
    if (Date.now() > deadline) throw new Error("gateway child did not listen within 30 s");
    await sleep(50);
  }
}

export async function stopChild(c: PinnedChild): Promise<void> {
  if (c.child.exitCode !== null) return;
  c.child.send("stop");
  const timer = setTimeout(() => c.child.kill("SIGKILL"), 10_000);
  await c.done.catch(() => undefined);
  clearTimeout(timer);
}

/** n requests, `concurrency` in flight on keep-alive connections; any non-200 fails the run. */
export async function sendAll(
  port: number,
  requests: readonly GatewayRequest[],
  n: number,
  concurrency: number,
  latenciesMs?: number[],
): Promise<void> {
  const agent = new http.Agent({ keepAlive: true, maxSockets: concurrency });
  let next = 0;
  const lane = async (): Promise<void> => {
    while (next < n) {
      const r = requests[next++ % requests.length] as GatewayRequest;
      const t0 = performance.now();
      await post(agent, port, r);
      latenciesMs?.push(performance.now() - t0);
    }
  };
  try {
    await Promise.all(Array.from({ length: concurrency }, lane));
  } finally {
    agent.destroy();
  }
}

function post(agent: http.Agent, port: number, r: GatewayRequest): Promise<void> {
  return new Promise((resolve, reject) => {
    const req = http.request(
      {
        agent,
        host: "127.0.0.1",
        port,
        method: "POST",
        path: "/v1/chat/completions",
        headers: {
          "content-type": "application/json",
          "content-length": r.body.length,
          authorization: r.authorization,
        },
      },
      (res) => {
        let body = "";
        res.setEncoding("utf8");
        res.on("data", (d: string) => (body += d));
        res.on("end", () => {
          if (res.statusCode === 200) resolve();
          else reject(new Error(`gateway answered ${res.statusCode}: ${body.slice(0, 300)}`));
        });
      },
    );
    req.on("error", reject);
    req.end(r.body);
  });
}

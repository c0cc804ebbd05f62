import { readFileSync } from "node:fs";
/**
 * Small helpers shared by the benchmark sections: statistics, timing and the
 * progress line. Kept free of project imports so every section can use them.
 */

const started = process.hrtime.bigint();

/** One progress line on stderr, so stdout stays clean for whoever pipes the summary. */
export function progress(section: string, message: string): void {
  const s = Number(process.hrtime.bigint() - started) / 1e9;
  process.stderr.write(`[bench +${s.toFixed(1).padStart(6)}s] ${section}: ${message}\n`);
}

export function median(values: readonly number[]): number {
  return quantile(values, 0.5);
}

/** Linear-interpolated quantile (q in 0..1); NaN for an empty list. */
export function quantile(values: readonly number[], q: number): number {
  if (values.length === 0) return Number.NaN;
  const s = [...values].sort((a, b) => a - b);
  const pos = (s.length - 1) * q;
  const lo = Math.floor(pos);
  const hi = Math.ceil(pos);
  const a = s[lo] ?? Number.NaN;
  const b = s[hi] ?? Number.NaN;
  return a + (b - a) * (pos - lo);
}

export function min(values: readonly number[]): number {
  return values.length === 0 ? Number.NaN : Math.min(...values);
}

export function max(values: readonly number[]): number {
  return values.length === 0 ? Number.NaN : Math.max(...values);
}

/** A spread summary: the median is the headline, min/max show how noisy the runs were. */
export interface Spread {
  median: number;
  min: number;
  max: number;
  runs: number[];
}

export function spread(values: readonly number[]): Spread {
  return { median: median(values), min: min(values), max: max(values), runs: [...values] };
}

/** Wall and CPU time of a synchronous block, in nanoseconds. */
export interface Timed {
  wallNs: number;
  cpuNs: number;
}

/**
 * Wall time comes from process.hrtime.bigint(). CPU time (process.cpuUsage,
 * user + system of the whole process) is kept next to it because the machine
 * is shared: a preempted loop inflates wall time, not CPU time.
 */
export function timeSync(fn: () => void): Timed {
  const c0 = process.cpuUsage();
  const t0 = process.hrtime.bigint();
  fn();
  const t1 = process.hrtime.bigint();
  const c1 = process.cpuUsage(c0);
  return { wallNs: Number(t1 - t0), cpuNs: (c1.user + c1.system) * 1000 };
}

export async function timeAsync(fn: () => Promise<void>): Promise<Timed> {
  const c0 = process.cpuUsage();
  const t0 = process.hrtime.bigint();
  await fn();
  const t1 = process.hrtime.bigint();
  const c1 = process.cpuUsage(c0);
  return { wallNs: Number(t1 - t0), cpuNs: (c1.user + c1.system) * 1000 };
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Rounds for reports: figures carry 3 significant digits, more would be noise here. */
export function round(n: number, digits = 3): number {
  if (!Number.isFinite(n) || n === 0) return n;
  const p = Math.pow(10, digits - 1 - Math.floor(Math.log10(Math.abs(n))));
  return Math.round(n * p) / p;
}

export function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/**
 * How long this process's main thread has run on a CPU, ms (Linux's
 * schedstat; undefined elsewhere). Unlike process.cpuUsage(), it leaves out
 * V8's own threads (garbage collector, compiler), which share the pinned core.
 */
export function mainThreadOnCpuMs(): number | undefined {
  try {
    const stat = readFileSync(`/proc/self/task/${process.pid}/schedstat`, "latin1");
    return Number(stat.split(" ")[0]) / 1e6;
  } catch {
    return undefined;
  }
}

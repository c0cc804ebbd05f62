/**
 * PostgreSQL's side of an end-to-end run: counters from pg_stat_database and
 * CPU time from /proc. pg_stat_statements is not preloaded on this server
 * (machine.ts reports it), so CPU is read from /proc/<pid>/stat of each
 * backend serving the run's database, sampled: a backend's CPU after its last
 * sample and before it exits is missed (at most one sample interval each).
 */
import { readdirSync, readFileSync } from "node:fs";
import pg from "pg";
import { ADMIN_DATABASE_URL } from "./machine.js";

// Linux reports utime/stime in clock ticks of USER_HZ, 100 on every mainstream kernel.
const TICKS_PER_SECOND = 100;

export interface DbCounters {
  deadlocks: number;
  commits: number;
  rollbacks: number;
  tuplesInserted: number;
  tuplesUpdated: number;
  /** Time backends spent executing statements (PG 14+), ms; includes lock waits. */
  activeTimeMs: number;
}

export async function dbCounters(client: pg.Client, datname: string): Promise<DbCounters> {
  const r = await client.query<Record<string, string>>(
    `SELECT deadlocks::text, xact_commit::text AS commits, xact_rollback::text AS rollbacks,
            tup_inserted::text, tup_updated::text, coalesce(active_time, 0)::text AS active_time
       FROM pg_stat_database WHERE datname = $1`,
    [datname],
  );
  const row = r.rows[0] ?? {};
  return {
    deadlocks: Number(row.deadlocks ?? 0),
    commits: Number(row.commits ?? 0),
    rollbacks: Number(row.rollbacks ?? 0),
    tuplesInserted: Number(row.tup_inserted ?? 0),
    tuplesUpdated: Number(row.tup_updated ?? 0),
    activeTimeMs: Number(row.active_time ?? 0),
  };
}

export function counterDelta(a: DbCounters, b: DbCounters): DbCounters {
  return {
    deadlocks: b.deadlocks - a.deadlocks,
    commits: b.commits - a.commits,
    rollbacks: b.rollbacks - a.rollbacks,
    tuplesInserted: b.tuplesInserted - a.tuplesInserted,
    tuplesUpdated: b.tuplesUpdated - a.tuplesUpdated,
    activeTimeMs: b.activeTimeMs - a.activeTimeMs,
  };
}

interface ProcStat {
  comm: string;
  ppid: number;
  /** utime + stime, ticks. */
  cpu: number;
  /** cutime + cstime: reaped children, ticks. */
  childCpu: number;
}

function procStat(pid: number): ProcStat | undefined {
  let s: string;
  try {
    s = readFileSync(`/proc/${pid}/stat`, "utf8");
  } catch {
    return undefined; // exited
  }
  // comm may hold spaces or parentheses: the fields resume after the last ')'.
  const close = s.lastIndexOf(")");
  const comm = s.slice(s.indexOf("(") + 1, close);
  const f = s.slice(close + 2).split(" ");
  const n = (i: number): number => Number(f[i] ?? 0);
  return { comm, ppid: n(1), cpu: n(11) + n(12), childCpu: n(13) + n(14) };
}

/**
 * CPU of the whole PostgreSQL server: live postgres processes plus what the
 * postmaster has collected from exited backends. Includes every database
 * (and anyone else's load on this shared server): context, not the figure.
 */
export function serverCpuTicks(): number {
  let total = 0;
  const stats = new Map<number, ProcStat>();
  for (const name of readdirSync("/proc")) {
    if (!/^\d+$/.test(name)) continue;
    const st = procStat(Number(name));
    if (st?.comm === "postgres") stats.set(Number(name), st);
  }
  for (const st of stats.values()) {
    total += st.cpu;
    // The postmaster is the postgres process whose parent is not one.
    if (!stats.has(st.ppid)) total += st.childCpu;
  }
  return total;
}

export interface DbSample {
  /** Seconds since the run's go. */
  t: number;
  backends: number;
  /** Backends waiting on a heavyweight lock (row or transaction locks: contention). */
  lockWaits: number;
}

/**
 * Samples the backends of one database: their CPU from /proc (baseline:
 * the first reading of a backend alive at start, zero for one born later)
 * and how many wait on locks.
 */
export class DbSampler {
  private readonly client = new pg.Client({ connectionString: ADMIN_DATABASE_URL });
  private readonly first = new Map<number, number>();
  private readonly last = new Map<number, number>();
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<void> | undefined;
  private started = false;
  readonly samples: DbSample[] = [];
  private serverStart = 0;
  private serverEnd = 0;
  private stopped: { backendCpuSeconds: number; serverCpuSeconds: number } | undefined;

  constructor(
    private readonly datname: string,
    private readonly everyMs: number,
    private readonly zeroAt: () => number,
  ) {}

  async start(): Promise<void> {
    await this.client.connect();
    this.serverStart = serverCpuTicks();
    await this.sample();
    this.started = true;
    this.timer = setInterval(() => {
      this.running ??= this.sample()
        .catch(() => undefined)
        .finally(() => (this.running = undefined));
    }, this.everyMs);
  }

  private async sample(): Promise<void> {
    const r = await this.client.query<{ pid: number; waiting: boolean }>(
      `SELECT pid, coalesce(wait_event_type = 'Lock', false) AS waiting
         FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()`,
      [this.datname],
    );
    let waits = 0;
    for (const { pid, waiting } of r.rows) {
      if (waiting) waits++;
      const st = procStat(pid);
      if (st === undefined) continue;
      if (!this.first.has(pid)) this.first.set(pid, this.started ? 0 : st.cpu);
      this.last.set(pid, st.cpu);
    }
    this.samples.push({
      t: (Date.now() - this.zeroAt()) / 1000,
      backends: r.rows.length,
      lockWaits: waits,
    });
  }

  async stop(): Promise<{ backendCpuSeconds: number; serverCpuSeconds: number }> {
    if (this.stopped) return this.stopped;
    if (!this.started) {
      // Never started (a run that failed before go): a query on the unconnected client would wait forever.
      this.stopped = { backendCpuSeconds: 0, serverCpuSeconds: 0 };
      await this.client.end().catch(() => undefined);
      return this.stopped;
    }
    if (this.timer !== undefined) clearInterval(this.timer);
    await this.running;
    await this.sample().catch(() => undefined);
    this.serverEnd = serverCpuTicks();
    await this.client.end();
    let ticks = 0;
    for (const [pid, last] of this.last) ticks += last - (this.first.get(pid) ?? 0);
    this.stopped = {
      backendCpuSeconds: ticks / TICKS_PER_SECOND,
      serverCpuSeconds: (this.serverEnd - this.serverStart) / TICKS_PER_SECOND,
    };
    return this.stopped;
  }
}

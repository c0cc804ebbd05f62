import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import os from "node:os";
import { Redis } from "ioredis";
import pg from "pg";
import { TEST_REDIS_URL } from "../test/support/redis.js";

export const ADMIN_DATABASE_URL =
  process.env.TEST_DATABASE_URL ?? "postgresql://postgres@127.0.0.1:5432/postgres";

export interface MachineInfo {
  cpuModel: string;
  cores: number;
  memoryGb: number;
  os: string;
  node: string;
  postgres: string;
  redis: string;
  /** Whether pg_stat_statements could be used for DB CPU (it needs shared_preload_libraries). */
  pgStatStatements: string;
  /** 1/5/15-minute load average when the run started: the machine is shared, this says how much. */
  loadAverageAtStart: number[];
  gitCommit: string;
  startedAt: string;
}

function cpuModel(): string {
  // os.cpus() gives only the short marketing name on some VMs; /proc/cpuinfo may say more.
  const fromOs = os.cpus()[0]?.model ?? "unknown";
  try {
    const line = readFileSync("/proc/cpuinfo", "utf8")
      .split("\n")
      .find((l) => l.startsWith("model name"));
    const fromProc = line?.split(":")[1]?.trim();
    return fromProc !== undefined && fromProc.length > fromOs.length ? fromProc : fromOs;
  } catch {
    return fromOs;
  }
}

function gitCommit(): string {
  try {
    const head = execFileSync("git", ["rev-parse", "--short", "HEAD"], { encoding: "utf8" }).trim();
    // Tracked files only: code the run measures is tracked, and a worktree's
    // untracked node_modules link made every run from one "uncommitted".
    const dirty =
      execFileSync("git", ["status", "--porcelain", "--untracked-files=no"], {
        encoding: "utf8",
      }).trim().length > 0;
    return dirty ? `${head} (uncommitted changes)` : head;
  } catch {
    return "unknown";
  }
}

export async function machineInfo(): Promise<MachineInfo> {
  const c = new pg.Client({ connectionString: ADMIN_DATABASE_URL });
  await c.connect();
  let postgres: string;
  let pgStatStatements: string;
  try {
    postgres = (await c.query<{ v: string }>("SELECT version() AS v")).rows[0]?.v ?? "unknown";
    const preload =
      (await c.query<{ v: string }>("SELECT current_setting('shared_preload_libraries') AS v"))
        .rows[0]?.v ?? "";
    const available =
      (
        await c.query<{ n: string }>(
          "SELECT count(*)::text AS n FROM pg_available_extensions WHERE name = 'pg_stat_statements'",
        )
      ).rows[0]?.n === "1";
    pgStatStatements = preload.includes("pg_stat_statements")
      ? "preloaded"
      : available
        ? "installed but not in shared_preload_libraries: not used (DB CPU comes from /proc)"
        : "not installed: DB CPU comes from /proc";
  } finally {
    await c.end();
  }
  const r = new Redis(TEST_REDIS_URL, { lazyConnect: true, maxRetriesPerRequest: 1 });
  let redis: string;
  try {
    await r.connect();
    const info = await r.info("server");
    redis = /redis_version:(\S+)/.exec(info)?.[1] ?? "unknown";
  } finally {
    r.disconnect();
  }
  return {
    cpuModel: cpuModel(),
    cores: os.availableParallelism(),
    memoryGb: Math.round(os.totalmem() / 1e9),
    os: `${os.type()} ${os.release()}`,
    node: process.version,
    postgres,
    redis,
    pgStatStatements,
    loadAverageAtStart: os.loadavg().map((l) => Math.round(l * 100) / 100),
    gitCommit: gitCommit(),
    startedAt: new Date().toISOString(),
  };
}

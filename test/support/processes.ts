import { spawn } from "node:child_process";
import { fileURLToPath } from "node:url";
import type { Ledger } from "./ledger.js";

const TSX = fileURLToPath(new URL("../../node_modules/.bin/tsx", import.meta.url));

export interface Spawned {
  pid: number;
  done: Promise<{ code: number | null; stdout: string; stderr: string }>;
  kill(signal: NodeJS.Signals): void;
}

/** Runs a TypeScript file as its own Node process. */
export function spawnTs(file: string, env: Record<string, string>): Spawned {
  const child = spawn(TSX, [fileURLToPath(new URL(file, import.meta.url))], {
    env: { ...process.env, ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let stdout = "";
  let stderr = "";
  child.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
  child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
  const done = new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) => {
    child.on("exit", (code) => resolve({ code, stdout, stderr }));
  });
  return { pid: child.pid ?? -1, done, kill: (s) => child.kill(s) };
}

/** Runs producer processes to completion and merges what they recorded into `ledger`. */
export async function runProducers(
  count: number,
  env: Record<string, string>,
  ledger: Ledger,
  seedBase = 1000,
): Promise<void> {
  const procs = Array.from({ length: count }, (_, i) =>
    spawnTs("./producer-process.ts", { ...env, SEED: String(seedBase + i) }),
  );
  const results = await Promise.all(procs.map((p) => p.done));
  for (const r of results) {
    if (r.code !== 0)
      throw new Error(`producer process exited ${r.code}: ${r.stderr.slice(-2000)}`);
    const last = r.stdout.trim().split("\n").pop() ?? "";
    ledger.merge(JSON.parse(last) as { events: number; totals: [string, string[]][] });
  }
}

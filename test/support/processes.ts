import { spawn } from "node:child_process";
import { join, relative } from "node:path";
import { fileURLToPath } from "node:url";
import { nodeArgs, REPO_ROOT } from "./paths.js";
import type { Ledger } from "./ledger.js";

export interface Spawned {
  pid: number;
  done: Promise<{
    code: number | null;
    signal: NodeJS.Signals | null;
    stdout: string;
    stderr: string;
  }>;
  kill(signal: NodeJS.Signals): void;
  /** Every JSON line printed so far. */
  readonly events: Record<string, unknown>[];
  /** Resolves with the first JSON line (past or future) that matches. */
  waitForEvent(
    match: (e: Record<string, unknown>) => boolean,
    timeoutMs?: number,
  ): Promise<Record<string, unknown>>;
}

/**
 * Runs a TypeScript file of this checkout as its own Node process: node
 * itself (not the tsx CLI, which would put a wrapper process in between and
 * take the signals a fault test sends), with tsx as a loader when the tests
 * run under it, or on the file's transpiled copy when they run transpiled.
 * `file` is relative to test/support/.
 */
export function spawnTs(
  file: string,
  env: Record<string, string>,
  args: readonly string[] = [],
): Spawned {
  const here = relative(REPO_ROOT, fileURLToPath(new URL(file, import.meta.url)));
  const source = here.replace(/^\.build\//, "").replace(/\.js$/, ".ts");
  return spawnNode([...nodeArgs(source), ...args], env);
}

/** The CLI as it is installed: the build (dist/cli/main.js) on plain node, as the image runs it. */
export function spawnCli(args: readonly string[], env: Record<string, string>): Spawned {
  return spawnNode([join(REPO_ROOT, "dist/cli/main.js"), ...args], env);
}

function spawnNode(argv: readonly string[], env: Record<string, string>): Spawned {
  const child = spawn(process.execPath, argv, {
    env: { ...process.env, ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let stdout = "";
  let stderr = "";
  let partial = "";
  const events: Record<string, unknown>[] = [];
  const waiters = new Set<() => void>();
  child.stdout.on("data", (d: Buffer) => {
    const text = d.toString();
    stdout += text;
    const lines = (partial + text).split("\n");
    partial = lines.pop() ?? "";
    for (const line of lines) {
      if (!line.startsWith("{")) continue;
      try {
        events.push(JSON.parse(line) as Record<string, unknown>);
      } catch {
        continue;
      }
      for (const w of waiters) w();
    }
  });
  child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
  let exited = false;
  const done = new Promise<{
    code: number | null;
    signal: NodeJS.Signals | null;
    stdout: string;
    stderr: string;
  }>((resolve) => {
    // "close", not "exit": exit can come before the last of stdout has been read.
    child.on("close", (code, signal) => {
      exited = true;
      for (const w of waiters) w();
      resolve({ code, signal, stdout, stderr });
    });
  });
  const waitForEvent = (
    match: (e: Record<string, unknown>) => boolean,
    timeoutMs = 30_000,
  ): Promise<Record<string, unknown>> =>
    new Promise((resolve, reject) => {
      const check = (): void => {
        const found = events.find(match);
        if (found !== undefined) {
          finish();
          resolve(found);
        } else if (exited) {
          finish();
          reject(
            new Error(
              `process ${child.pid} exited before the awaited event; stderr: ${stderr.slice(-1500)}`,
            ),
          );
        }
      };
      const timer = setTimeout(() => {
        finish();
        reject(
          new Error(
            `timed out after ${timeoutMs} ms waiting for an event from process ${child.pid}; stderr: ${stderr.slice(-1500)}`,
          ),
        );
      }, timeoutMs);
      const finish = (): void => {
        clearTimeout(timer);
        waiters.delete(check);
      };
      waiters.add(check);
      check();
    });
  return { pid: child.pid ?? -1, done, kill: (s) => child.kill(s), events, waitForEvent };
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

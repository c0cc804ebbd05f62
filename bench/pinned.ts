/**
 * Children that measure CPU cost run pinned to one core (taskset), where the
 * machine has more than one and taskset exists: unpinned, the scheduler moves
 * a timed loop and V8's GC threads between the two cores of this VM, and the
 * median of the same loop swung 2x from run to run.
 */
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import os from "node:os";
import { fileURLToPath } from "node:url";

export interface PinnedChild {
  child: ChildProcess;
  /** The core it is pinned to, or null where it could not be. */
  cpu: number | null;
  /** Its stdout so far. */
  stdout: () => string;
  /** Resolves with the exit code once it has exited. */
  done: Promise<number | null>;
}

/** Starts bench/<file> under tsx on the last core, with an IPC channel. */
export function spawnPinned(file: string, env: Record<string, string>): PinnedChild {
  const cores = os.availableParallelism();
  const taskset = spawnSync("taskset", ["-V"], { stdio: "ignore" }).status === 0;
  const cpu = cores > 1 && taskset ? cores - 1 : null;
  const script = fileURLToPath(new URL(`./${file}`, import.meta.url));
  // BENCH_CPU_PROF_DIR: write a V8 CPU profile of each child there (NODE_OPTIONS refuses --cpu-prof).
  const prof = process.env.BENCH_CPU_PROF_DIR;
  const profile = prof === undefined ? [] : ["--cpu-prof", `--cpu-prof-dir=${prof}`];
  const node = [process.execPath, ...profile, "--import", "tsx", script];
  const argv = cpu === null ? node : ["taskset", "-c", String(cpu), ...node];
  const child = spawn(argv[0] as string, argv.slice(1), {
    // taskset execs node in place, so the IPC descriptor reaches it.
    stdio: ["ignore", "pipe", "inherit", "ipc"],
    env: { ...process.env, ...env },
  });
  let out = "";
  child.stdout?.setEncoding("utf8");
  child.stdout?.on("data", (d: string) => (out += d));
  const done = new Promise<number | null>((resolve, reject) => {
    child.on("error", reject);
    child.on("close", resolve);
  });
  return { child, cpu, stdout: () => out, done };
}

/** One request/response over the child's IPC channel. */
export function ask<T>(child: ChildProcess, message: string): Promise<T> {
  return new Promise((resolve, reject) => {
    const onMessage = (m: unknown): void => {
      child.off("exit", onExit);
      resolve(m as T);
    };
    const onExit = (): void => {
      child.off("message", onMessage);
      reject(new Error(`child exited before answering ${message}`));
    };
    child.once("message", onMessage);
    child.once("exit", onExit);
    child.send(message);
  });
}

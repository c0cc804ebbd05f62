import { relative } from "node:path";
import { fileURLToPath } from "node:url";
import { createTestDatabase, type TestDatabase } from "../test/support/db.js";
import { spawnTs, type Spawned } from "../test/support/processes.js";
import { cleanRedis, uniquePrefix } from "../test/support/redis.js";
import { errorMessage, progress, sleep } from "./util.js";

/**
 * Everything the benchmark creates outside its own heap: databases, Redis
 * prefixes, child processes. Each is registered the moment it exists, so a
 * failure (or Ctrl-C) anywhere still drops, cleans and kills all of it.
 */
export class Resources {
  private readonly databases = new Set<TestDatabase>();
  private readonly prefixes = new Set<string>();
  private readonly children = new Set<Spawned>();
  private cleaning: Promise<void> | undefined;

  /** A freshly migrated database (test/support/db.ts), dropped at cleanup if not released before. */
  async database(label: string): Promise<TestDatabase> {
    const t = await createTestDatabase(`bench_${label}`);
    this.databases.add(t);
    return t;
  }

  async dropDatabase(t: TestDatabase): Promise<void> {
    this.databases.delete(t);
    await t.drop();
  }

  prefix(label: string): string {
    const p = uniquePrefix(`bench-${label}`);
    this.prefixes.add(p);
    return p;
  }

  async cleanPrefix(p: string): Promise<void> {
    this.prefixes.delete(p);
    await cleanRedis(p);
  }

  /**
   * A TypeScript child (test/support/processes.ts). `file` is relative to
   * bench/. The child is forgotten once it exits, so cleanup only signals
   * live processes.
   */
  spawn(file: string, env: Record<string, string>): Spawned {
    // spawnTs resolves paths against test/support/.
    const child = spawnTs(`../../bench/${file}`, env);
    this.children.add(child);
    void child.done.then(() => this.children.delete(child));
    return child;
  }

  /** As spawn, for a TypeScript file anywhere (an absolute path), e.g. another checkout's. */
  spawnAt(path: string, env: Record<string, string>): Spawned {
    // spawnTs resolves paths against test/support/.
    const here = fileURLToPath(new URL("../test/support/", import.meta.url));
    const child = spawnTs(relative(here, path), env);
    this.children.add(child);
    void child.done.then(() => this.children.delete(child));
    return child;
  }

  get liveChildren(): number {
    return this.children.size;
  }

  /** Idempotent: the signal handler and the normal exit path may both call it. */
  cleanup(): Promise<void> {
    this.cleaning ??= this.doCleanup();
    return this.cleaning;
  }

  private async doCleanup(): Promise<void> {
    const children = [...this.children];
    if (children.length > 0) {
      progress("cleanup", `stopping ${children.length} child process(es)`);
      for (const c of children) c.kill("SIGTERM");
      const exited = Promise.all(children.map((c) => c.done));
      const timedOut = await Promise.race([
        exited.then(() => false),
        sleep(5_000).then(() => true),
      ]);
      // tsx relays SIGTERM to the real child; SIGKILL is the fallback for one that ignores it.
      if (timedOut) for (const c of this.children) c.kill("SIGKILL");
    }
    for (const t of [...this.databases]) {
      try {
        await this.dropDatabase(t);
      } catch (err) {
        progress("cleanup", `could not drop database ${t.name}: ${errorMessage(err)}`);
      }
    }
    for (const p of [...this.prefixes]) {
      try {
        await this.cleanPrefix(p);
      } catch (err) {
        progress("cleanup", `could not clean Redis prefix ${p}: ${errorMessage(err)}`);
      }
    }
  }
}

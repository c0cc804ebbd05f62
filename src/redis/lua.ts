import type { RedisClient } from "./connection.js";
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";

/**
 * Lua scripts live in <folder>/scripts/<name>-<numberOfKeys>.lua (lock/ and
 * queue/). They are run by SHA (EVALSHA) and loaded on NOSCRIPT, so a
 * changed script gets a new SHA and two versions of this project sharing one
 * Redis never run each other's.
 */
export class LuaScript {
  readonly sha: string;
  readonly numberOfKeys: number;

  constructor(
    readonly name: string,
    readonly source: string,
  ) {
    const m = /-(\d+)$/.exec(name);
    if (m === null) throw new Error(`script name must end with -<numberOfKeys>: ${name}`);
    this.numberOfKeys = Number(m[1]);
    this.sha = createHash("sha1").update(source).digest("hex");
  }

  /** Loads <dir>/<name>.lua (dir: a folder URL, e.g. new URL("./scripts/", import.meta.url)). */
  static load(name: string, dir: URL): LuaScript {
    const source = readFileSync(new URL(`${name}.lua`, dir), "utf8");
    return new LuaScript(name, source);
  }

  async run(
    redis: RedisClient,
    keys: readonly string[],
    args: readonly (string | number)[],
  ): Promise<unknown> {
    if (keys.length !== this.numberOfKeys) {
      throw new Error(`${this.name} takes ${this.numberOfKeys} keys, got ${keys.length}`);
    }
    try {
      return await redis.evalsha(this.sha, keys.length, ...keys, ...args);
    } catch (err) {
      if (err instanceof Error && err.message.startsWith("NOSCRIPT")) {
        return await redis.eval(this.source, keys.length, ...keys, ...args);
      }
      throw err;
    }
  }
}

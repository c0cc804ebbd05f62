import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

/**
 * Where the tests run from: test/ itself under a TypeScript loader, or the
 * transpiled copy in .build/ on plain node (scripts/transpile-tests.mjs, what
 * `npm test` runs). Both find the repository's own files from here.
 */

/** True when this code runs transpiled (JavaScript in .build/), false under tsx. */
export const TRANSPILED = import.meta.url.endsWith(".js");

function findRoot(): string {
  // The first folder up with a package.json: .build/ has none of its own.
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(dir, "package.json"))) {
    const up = dirname(dir);
    if (up === dir) throw new Error("no package.json above the tests");
    dir = up;
  }
  return dir;
}

/** The repository's root (package.json, Dockerfile, docker-compose.yml, dist/). */
export const REPO_ROOT = findRoot();

/**
 * A TypeScript module of this checkout as the running tests see it: `path`
 * (relative to the repository, e.g. "test/support/worker-process.ts") in
 * test/ under tsx, its transpiled .js in .build/ otherwise.
 */
export function modulePath(path: string): string {
  return TRANSPILED
    ? join(REPO_ROOT, ".build", path.replace(/\.ts$/, ".js"))
    : join(REPO_ROOT, path);
}

/** Node's arguments to run such a module: a TypeScript loader only when the tests have one. */
export function nodeArgs(path: string): string[] {
  return TRANSPILED ? [modulePath(path)] : ["--import", "tsx", modulePath(path)];
}

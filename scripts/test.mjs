// `npm test` after bootstrap: the three tiers of test/, each with node's test
// runner (one process per file, so a file's database, Redis prefix and
// processes are its own).
//   unit/         no services: run as parallel as the machine allows;
//   integration/  real Redis and PostgreSQL, a database and key prefix of
//                 their own per file: a few files at once;
//   system/       processes killed, paused or restarted, timing windows
//                 measured: one file at a time, so load from other files
//                 cannot move a window.
// The files run transpiled (scripts/transpile-tests.mjs: .build/, plain node)
// rather than through a TypeScript loader, which cost each test process, and
// each process a test starts, about a second of CPU. Every test has a
// timeout, so one hang cannot stall CI. Arguments, if any, are test files to
// run instead, under tsx, one at a time.
import { execFileSync, spawnSync } from "node:child_process";
import { readdirSync } from "node:fs";
import { availableParallelism } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const cores = availableParallelism();
const TIMEOUT_MS = 240_000;

// Files known to take longest start first, so a long one does not start last
// and run alone while the others are done (the rest follow in name order).
const LONGEST_FIRST = [
  "cli-operations",
  "package",
  "cli-refusals",
  "e2e",
  "faults",
  "producer",
  "partitions",
  "flush",
  "unicode-property",
  "direct-mode",
  "cluster",
  "bull-board",
];
const rank = (f) => {
  const i = LONGEST_FIRST.indexOf(f.replace(/\.test\.js$/, ""));
  return i < 0 ? LONGEST_FIRST.length : i;
};

const files = (tier) =>
  readdirSync(join(root, ".build", "test", tier))
    .filter((f) => f.endsWith(".test.js"))
    .sort((a, b) => rank(a) - rank(b) || a.localeCompare(b))
    .map((f) => join(".build", "test", tier, f));

const run = (name, list, concurrency, loader = []) => {
  const started = Date.now();
  process.stderr.write(`\n[test] ${name}: ${list.length} file(s), ${concurrency} at a time\n`);
  const r = spawnSync(
    process.execPath,
    [
      ...loader,
      "--enable-source-maps",
      "--test",
      `--test-concurrency=${concurrency}`,
      `--test-timeout=${TIMEOUT_MS}`,
      ...list,
    ],
    { cwd: root, stdio: "inherit" },
  );
  process.stderr.write(
    `[test] ${name}: ${r.status === 0 ? "passed" : "FAILED"} in ${Math.round((Date.now() - started) / 1000)} s\n`,
  );
  return r.status === 0;
};

const chosen = process.argv.slice(2);
let ok;
if (chosen.length > 0) ok = run("chosen", chosen, 1, ["--import", "tsx"]);
else {
  execFileSync(process.execPath, [join(root, "scripts/transpile-tests.mjs")], { stdio: "inherit" });
  ok = run("unit", files("unit"), Math.max(2, cores * 2));
  ok = run("integration", files("integration"), Math.max(2, cores + 1)) && ok;
  ok = run("system", files("system"), 1) && ok;
}
process.exit(ok ? 0 : 1);

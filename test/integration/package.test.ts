import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { createTestDatabase, type TestDatabase } from "../support/db.js";
import { REPO_ROOT } from "../support/paths.js";
import { cleanRedis, TEST_REDIS_URL, uniquePrefix } from "../support/redis.js";

/**
 * The package as a gateway author gets it: `npm pack`, installed into an
 * empty project by npm, then used from JavaScript (.mjs) and from TypeScript
 * (type-checked against the installed declarations, compiled, run), against
 * the real Redis and PostgreSQL: a worker and a producer from the installed
 * package, spend recorded, flushed and reconciled exactly.
 */

const ROOT = REPO_ROOT;
const pkg = JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8")) as {
  name: string;
  version: string;
};

/** What both programs do, as the README's embedding example does it. */
const PROGRAM = (lang: "js" | "ts"): string => {
  const t = (ts: string, js = ""): string => (lang === "ts" ? ts : js);
  return `import {
  buildConfig,
  createSpendProducer,
  migrate,
  silentLogger,
  startFlushWorker,${t("\n  type SpendEvent,")}
} from "${pkg.name}";

const env = process.env;
const config = buildConfig(
  {
    general_settings: { use_redis_transaction_buffer: true },
    litellm_settings: { cache: true, cache_params: { type: "redis" } },
    spend_buffer_settings: { key_prefix: env.PREFIX, worker_flush_every_seconds: 0.2 },
  },
  { DATABASE_URL: env.DATABASE_URL, REDIS_URL: env.REDIS_URL },
);
await migrate({ databaseUrl: config.databaseUrl, log: () => undefined });
const worker = await startFlushWorker(config, { port: false, logger: silentLogger });
const producer = await createSpendProducer(config, { logger: silentLogger });
for (let i = 0; i < 1000; i++) {
  const event${t(": SpendEvent")} = { spend: "0.000000123457", apiKey: "k" + (i % 7), userId: "u", tags: ["t"] };
  producer.record(event);
}
await producer.close();
const until = Date.now() + 20_000;
while ((await worker.worker.flushNow()).outcome !== "empty") {
  if (Date.now() > until) throw new Error("not flushed within 20 s");
}
await worker.close();
process.stdout.write("recorded 1000\\n");
`;
};

describe(`the package (${pkg.name}), packed and installed`, () => {
  let t: TestDatabase;
  let dir: string;
  const prefix = uniquePrefix("package");

  before(async () => {
    t = await createTestDatabase("package");
    dir = mkdtempSync(join(tmpdir(), "spend-package-"));
  });
  after(async () => {
    rmSync(dir, { recursive: true, force: true });
    await cleanRedis(prefix);
    await t.drop();
  });

  it("installs from its tarball into an empty project and works from .mjs and .ts", async () => {
    assert.ok(existsSync(join(ROOT, "dist/index.js")), "dist/ is built (npm test builds it first)");
    // What `npm pack` ships: the build, the migrations, no sources, no tests, no source maps.
    const packed = JSON.parse(
      execFileSync("npm", ["pack", "--ignore-scripts", "--json", "--pack-destination", dir], {
        cwd: ROOT,
        encoding: "utf8",
      }),
    ) as { filename: string; files: { path: string }[] }[];
    const files = packed[0]?.files.map((f) => f.path) ?? [];
    assert.ok(files.includes("dist/index.js") && files.includes("dist/index.d.ts"));
    assert.ok(files.includes("dist/cli/main.js"));
    assert.ok(files.some((f) => f.startsWith("prisma/migrations/")));
    assert.ok(files.some((f) => f.endsWith(".lua")));
    // What the docs point an operator at ships too: alert rules, dashboards, the example config.
    for (const f of ["LICENSE", "deploy/prometheus/alerts.yml", "deploy/proxy_config.yaml"])
      assert.ok(files.includes(f), f);
    assert.ok(files.some((f) => f.startsWith("deploy/grafana/dashboards/")));
    for (const f of files) assert.doesNotMatch(f, /^(src|test|bench)\/|\.map$/, f);

    const project = join(dir, "project");
    execFileSync("mkdir", ["-p", project]);
    writeFileSync(
      join(project, "package.json"),
      JSON.stringify({ name: "gateway-of-a-user", private: true, type: "module" }),
    );
    execFileSync(
      "npm",
      [
        "install",
        "--no-audit",
        "--no-fund",
        "--prefer-offline",
        // The dependencies' install scripts build an optional native accelerator
        // (msgpackr-extract, under BullMQ) and fetch Prisma's native engines,
        // neither of which this package uses: it works without them, which
        // this proves, and the test spends no minute compiling C++.
        "--ignore-scripts",
        "--loglevel=error",
        join(dir, packed[0]?.filename ?? ""),
      ],
      { cwd: project, stdio: "pipe" },
    );
    const env = { ...process.env, DATABASE_URL: t.url, REDIS_URL: TEST_REDIS_URL, PREFIX: prefix };

    // JavaScript, plain node.
    writeFileSync(join(project, "embed.mjs"), PROGRAM("js"));
    assert.match(
      execFileSync(process.execPath, ["embed.mjs"], { cwd: project, env, encoding: "utf8" }),
      /recorded 1000/,
    );

    // TypeScript: strict, against the installed declarations; then compiled and run.
    writeFileSync(join(project, "embed.ts"), PROGRAM("ts"));
    writeFileSync(
      join(project, "tsconfig.json"),
      JSON.stringify({
        compilerOptions: {
          target: "ES2022",
          module: "NodeNext",
          moduleResolution: "NodeNext",
          strict: true,
          skipLibCheck: true,
          outDir: "out",
          typeRoots: [join(ROOT, "node_modules/@types")],
          types: ["node"],
        },
        files: ["embed.ts"],
      }),
    );
    execFileSync(process.execPath, [join(ROOT, "node_modules/typescript/bin/tsc"), "-p", "."], {
      cwd: project,
      stdio: "pipe",
    });
    assert.match(
      execFileSync(process.execPath, ["out/embed.js"], { cwd: project, env, encoding: "utf8" }),
      /recorded 1000/,
    );

    // Two runs, 1 000 events each at 0.000000123457 USD: exactly 0.000246914000 USD.
    const user = await t.db.userTable.findUniqueOrThrow({ where: { userId: "u" } });
    assert.equal(user.spend.toFixed(12), "0.000246914000");
    const tag = await t.db.dailyTagSpend.aggregate({ _sum: { apiRequests: true } });
    assert.equal(tag._sum.apiRequests, 2000n);

    // The installed bin runs on plain node.
    const help = execFileSync(join(project, "node_modules/.bin/haimaker-spend"), ["--help"], {
      cwd: project,
      encoding: "utf8",
    });
    assert.match(help, /Usage: haimaker-spend/);
  });
});

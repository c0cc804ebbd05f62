import assert from "node:assert/strict";
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, it } from "node:test";
import ts from "typescript";
import { parse as parseYaml } from "yaml";
import { subcommands } from "../../src/cli/program.js";
import { buildConfig } from "../../src/config/config.js";
import { renderConfigReference } from "../../src/config/config-reference.js";
import { dailyJobPayloadSchema, entityJobSchema } from "../../src/contract/spend-batch.js";
import { REPO_ROOT } from "../support/paths.js";

/**
 * The docs cannot drift from the code: every code sample in README.md and
 * docs/ is compiled or checked against it here.
 * - TypeScript: type-checked, strict, against the package's public entry
 *   point (imports of "haimaker-spend-buffer" resolve to src/index.ts).
 * - YAML that starts with `# proxy_config.yaml`: a configuration the code accepts.
 * - Shell: every `haimaker-spend ...` is a real subcommand, every `npm run X` a real script.
 * - JSON: parses.
 * And docs/configuration.md is exactly what the schema generates; no table
 * row is wider than a page.
 */

interface Sample {
  file: string;
  line: number;
  lang: string;
  code: string;
}

const DOCS = [
  "README.md",
  ...readdirSync(join(REPO_ROOT, "docs"))
    .filter((f) => f.endsWith(".md"))
    .map((f) => join("docs", f)),
];

function samples(): Sample[] {
  const out: Sample[] = [];
  for (const file of DOCS) {
    const lines = readFileSync(join(REPO_ROOT, file), "utf8").split("\n");
    for (let i = 0; i < lines.length; i++) {
      const open = /^```(\w*)\s*$/.exec(lines[i] ?? "");
      if (open === null) continue;
      const start = i;
      const body: string[] = [];
      for (i++; i < lines.length && !/^```\s*$/.test(lines[i] ?? ""); i++)
        body.push(lines[i] ?? "");
      out.push({ file, line: start + 1, lang: open[1] ?? "", code: body.join("\n") });
    }
  }
  return out;
}

const where = (s: Sample): string => `${s.file}:${s.line}`;

describe("docs", () => {
  const all = samples();

  it("docs/configuration.md is what the configuration schema generates (npm run docs:config)", () => {
    assert.equal(
      readFileSync(join(REPO_ROOT, "docs/configuration.md"), "utf8"),
      renderConfigReference(),
      "run `npm run docs:config`",
    );
  });

  it("every code block says its language", () => {
    for (const s of all)
      assert.notEqual(s.lang, "", `${where(s)}: a code block without a language`);
  });

  it("TypeScript samples type-check, strict, against the public entry point", () => {
    const tsSamples = all.filter((s) => s.lang === "ts" || s.lang === "typescript");
    assert.ok(tsSamples.length > 0, "the docs show how to embed the package");
    const names = tsSamples.map((s, i) => join(REPO_ROOT, `.docs-sample-${i}.ts`));
    const sources = new Map(names.map((n, i) => [n, tsSamples[i]?.code ?? ""]));
    const options: ts.CompilerOptions = {
      target: ts.ScriptTarget.ES2022,
      module: ts.ModuleKind.NodeNext,
      moduleResolution: ts.ModuleResolutionKind.NodeNext,
      strict: true,
      noEmit: true,
      skipLibCheck: true,
      types: ["node"],
      lib: ["lib.es2023.d.ts"],
      paths: { "haimaker-spend-buffer": [join(REPO_ROOT, "src/index.ts")] },
    };
    const host = ts.createCompilerHost(options);
    const read = host.readFile.bind(host);
    host.readFile = (f) => sources.get(f) ?? read(f);
    const exists = host.fileExists.bind(host);
    host.fileExists = (f) => sources.has(f) || exists(f);
    const program = ts.createProgram(names, options, host);
    const problems = ts
      .getPreEmitDiagnostics(program)
      .filter((d) => d.file !== undefined && sources.has(d.file.fileName))
      .map((d) => {
        const i = names.indexOf(d.file?.fileName ?? "");
        const s = tsSamples[i];
        const { line } = d.file?.getLineAndCharacterOfPosition(d.start ?? 0) ?? { line: 0 };
        return `${s !== undefined ? s.file : "?"}:${(s?.line ?? 0) + line + 1}: ${ts.flattenDiagnosticMessageText(d.messageText, " ")}`;
      });
    assert.deepEqual(problems, []);
  });

  it("configuration samples are configurations the code accepts", () => {
    const configs = all.filter(
      (s) => s.lang === "yaml" && s.code.trimStart().startsWith("# proxy_config.yaml"),
    );
    assert.ok(configs.length > 0, "the docs show a configuration");
    // Every os.environ/NAME a sample names resolves; the variables that
    // override the file stay unset, so the file's own settings are checked.
    const overrides = new Set([
      "REDIS_URL",
      "REDIS_CLUSTER_NODES",
      "DATABASE_URL",
      "LOG_LEVEL",
      "METRICS_PORT",
    ]);
    const env = new Proxy(
      {},
      {
        get: (_t, name) =>
          typeof name === "string" && !overrides.has(name) ? `value-of-${name}` : undefined,
      },
    );
    for (const s of configs)
      assert.doesNotThrow(() => buildConfig(parseYaml(s.code), env), where(s));
    for (const s of all.filter((x) => x.lang === "yaml"))
      assert.doesNotThrow(() => parseYaml(s.code), where(s));
  });

  it("shell samples name real subcommands and scripts", () => {
    const known = subcommands();
    const scripts = Object.keys(
      (
        JSON.parse(readFileSync(join(REPO_ROOT, "package.json"), "utf8")) as {
          scripts: Record<string, string>;
        }
      ).scripts,
    );
    for (const s of all.filter((x) => x.lang === "sh" || x.lang === "bash")) {
      for (const m of s.code.matchAll(/haimaker-spend\s+([a-z-]+(?:\s+[a-z-]+)?)/g)) {
        const words = (m[1] ?? "").split(/\s+/);
        const sub = known.find((k) => k === words.join(" ") || k === words[0]);
        assert.ok(
          sub !== undefined,
          `${where(s)}: \`haimaker-spend ${m[1] ?? ""}\` is no subcommand`,
        );
      }
      for (const m of s.code.matchAll(/npm run ([\w:-]+)/g))
        assert.ok(scripts.includes(m[1] ?? ""), `${where(s)}: no npm script ${m[1] ?? ""}`);
    }
  });

  it("JSON samples parse, and every spend job sample is one the flush reads", () => {
    let jobs = 0;
    for (const s of all.filter((x) => x.lang === "json")) {
      let data: unknown;
      assert.doesNotThrow(() => (data = JSON.parse(s.code)), where(s));
      if (typeof data !== "object" || data === null || !("batchId" in data)) continue;
      jobs++;
      const entity = entityJobSchema.safeParse(data);
      const daily = dailyJobPayloadSchema.safeParse(data);
      assert.ok(
        entity.success || daily.success,
        `${where(s)}: ${daily.error?.issues[0]?.message ?? ""} ${entity.error?.issues[0]?.message ?? ""}`,
      );
      const rows = entity.success ? entity.data.rows : daily.data?.rows;
      assert.ok((rows?.length ?? 0) > 0, `${where(s)}: a sample job with no rows`);
    }
    assert.ok(jobs >= 2, "the job format samples were found");
  });

  it("no table row is wider than a page (120 characters)", () => {
    for (const file of DOCS) {
      const lines = readFileSync(join(REPO_ROOT, file), "utf8").split("\n");
      lines.forEach((l, i) => {
        if (l.startsWith("|"))
          assert.ok(l.length <= 120, `${file}:${i + 1}: a table row ${l.length} wide`);
      });
    }
  });
});

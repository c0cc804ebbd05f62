import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, it } from "node:test";
import { promisify } from "node:util";
import { parse } from "yaml";
import { REPO_ROOT } from "../support/paths.js";

/**
 * The alert rules, checked and unit-tested by Prometheus's own promtool: the
 * configuration and rules load, every group's tests in
 * deploy/prometheus/tests/ pass, and every alert has a test where it fires
 * and one where it stays silent, so a new alert cannot go untested.
 * scripts/bootstrap.sh (run by `npm test`) installs promtool where missing.
 */
const run = promisify(execFile);
const PROMTOOL = process.env.PROMTOOL ?? "promtool";
const PROMETHEUS = "deploy/prometheus";
const TESTS = `${PROMETHEUS}/tests`;

interface Rule {
  alert?: string;
  record?: string;
  expr: string;
}
interface RuleFile {
  groups: { name: string; rules: Rule[] }[];
}
interface AlertTest {
  eval_time: string;
  alertname: string;
  exp_alerts?: unknown[] | null;
}
interface TestFile {
  rule_files: string[];
  tests: {
    name?: string;
    input_series?: { series: string; values: string }[];
    alert_rule_test?: AlertTest[];
  }[];
}

const read = (path: string): unknown => parse(readFileSync(join(REPO_ROOT, path), "utf8"));

const rules = read(`${PROMETHEUS}/alerts.yml`) as RuleFile;
const testFiles = readdirSync(join(REPO_ROOT, TESTS))
  .filter((f) => f.endsWith(".test.yml"))
  .sort()
  .map((f) => `${TESTS}/${f}`);

/** Runs promtool from the repository's root; fails with its output, or with how to install it. */
async function promtool(...args: string[]): Promise<string> {
  try {
    const { stdout, stderr } = await run(PROMTOOL, args, {
      cwd: REPO_ROOT,
      timeout: 120_000,
      maxBuffer: 16 * 1024 * 1024,
    });
    return stdout + stderr;
  } catch (e) {
    // A spawn failure has a string code (ENOENT), an exit a number.
    const err = e as Error & { code?: string | number; stdout?: string; stderr?: string };
    if (err.code === "ENOENT")
      assert.fail(
        `${PROMTOOL} not found: the alert rules are tested with Prometheus's promtool. ` +
          "Install it with `sudo apt-get install --no-install-recommends prometheus` (Debian, " +
          "Ubuntu), or run `bash scripts/bootstrap.sh --browser`, which does so where it is " +
          "missing; elsewhere, put promtool from a Prometheus release on the PATH or set PROMTOOL.",
      );
    assert.fail(
      `promtool ${args.join(" ")} failed (${String(err.code ?? err.message)}):\n` +
        `${err.stdout ?? ""}${err.stderr ?? ""}`,
    );
  }
}

describe("Prometheus alert rules (promtool)", () => {
  it("prometheus.yml is a valid configuration and loads the rules", async () => {
    const out = await promtool("check", "config", `${PROMETHEUS}/prometheus.yml`);
    assert.match(out, /SUCCESS/, out);
  });

  it("alerts.yml is valid", async () => {
    const out = await promtool("check", "rules", `${PROMETHEUS}/alerts.yml`);
    const alerts = rules.groups.flatMap((g) => g.rules).length;
    assert.match(out, new RegExp(`SUCCESS: ${alerts} rules found`), out);
  });

  it("every group's unit tests pass", async () => {
    assert.ok(testFiles.length > 0, `no *.test.yml in ${TESTS}`);
    const out = await promtool("test", "rules", ...testFiles);
    for (const f of testFiles) assert.match(out, new RegExp(`Unit Testing: +${f}\\s+SUCCESS`), out);
  });
});

describe("Prometheus alert rule tests cover every alert", () => {
  const tests = new Map(testFiles.map((f) => [f, read(f) as TestFile]));
  const alertTests = [...tests.values()].flatMap((t) =>
    t.tests.flatMap((g) => g.alert_rule_test ?? []),
  );
  const alerts = rules.groups.flatMap((g) => g.rules.flatMap((r) => r.alert ?? []));

  it("has one test file per group, each loading alerts.yml", () => {
    assert.deepEqual(
      testFiles,
      rules.groups.map((g) => `${TESTS}/${g.name}.test.yml`).sort(),
      "deploy/prometheus/tests/<group>.test.yml for each group of alerts.yml",
    );
    for (const [f, t] of tests) assert.deepEqual(t.rule_files, ["../alerts.yml"], f);
    assert.equal(new Set(alerts).size, alerts.length, "alert names are unique");
  });

  it("tests every alert both firing and silent", () => {
    for (const alert of alerts) {
      const cases = alertTests.filter((t) => t.alertname === alert);
      assert.ok(
        cases.some((t) => (t.exp_alerts ?? []).length > 0),
        `no test in ${TESTS} where ${alert} fires`,
      );
      assert.ok(
        cases.some((t) => (t.exp_alerts ?? []).length === 0),
        `no test in ${TESTS} where ${alert} stays silent`,
      );
    }
  });

  it("tests only alerts and series the rules have (a typo would pass silently)", () => {
    const known = new Set(alerts);
    for (const t of alertTests)
      assert.ok(known.has(t.alertname), `${t.alertname} (at ${t.eval_time}) is not in alerts.yml`);
    // A test feeding a series no rule reads proves nothing: its metric name
    // must appear in some rule's expression.
    const readByRules = new Set(
      rules.groups.flatMap((g) => g.rules.flatMap((r) => r.expr.match(/[A-Za-z_:][\w:]*/g) ?? [])),
    );
    for (const [f, file] of tests)
      for (const group of file.tests)
        for (const s of group.input_series ?? []) {
          const metric = /^[A-Za-z_:][\w:]*/.exec(s.series.trim())?.[0] ?? "";
          assert.ok(
            readByRules.has(metric),
            `${f} (${group.name ?? "?"}): no rule reads ${s.series}`,
          );
        }
  });
});

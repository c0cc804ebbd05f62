import { budgetMetrics } from "../../src/budget/budget-metrics.js";
import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import { join, posix } from "node:path";
import { describe, it } from "node:test";
import ts from "typescript";
import { parse } from "yaml";
import { flushMetrics } from "../../src/flush/flush-metrics.js";
import { gatewayMetrics } from "../../src/gateway/gateway-metrics.js";
import { SpendMetrics } from "../../src/observe/metrics.js";
import { persistMetrics } from "../../src/persist/persist-metrics.js";
import { producerMetrics } from "../../src/produce/producer-metrics.js";
import { queueGauges } from "../../src/queue/queue-gauges.js";
import { REPO_ROOT } from "../support/paths.js";

/**
 * The Grafana dashboard, without a Grafana: it must be a dashboard Grafana's
 * own schema accepts, every query must name a metric this code registers,
 * and the compose deployment must provision it where Grafana looks.
 */
const DASHBOARD = "deploy/grafana/dashboards/spend-buffer.json";
const root = (p: string): string => join(REPO_ROOT, p);
const dashboardText = readFileSync(root(DASHBOARD), "utf8");

interface Target {
  refId?: string;
  expr?: string;
  datasource?: { type?: string; uid?: string };
}
interface Override {
  matcher: { id: string; options?: unknown };
  properties: { id: string; value?: unknown }[];
}
interface Panel {
  id?: number;
  type: string;
  title?: string;
  gridPos?: { x: number; y: number; w: number; h: number };
  datasource?: { type?: string; uid?: string };
  fieldConfig?: { defaults: { unit?: string }; overrides: Override[] };
  targets?: Target[];
  panels?: Panel[];
}
interface Variable {
  name: string;
  type: string;
  query?: string | { query?: string };
  current?: { text?: unknown; value?: unknown };
}
const dashboard = JSON.parse(dashboardText) as {
  templating?: { list?: Variable[] };
  panels?: Panel[];
};
/** Every panel, those inside rows included; rows themselves are not. */
const panels: Panel[] = (dashboard.panels ?? []).flatMap((p) =>
  p.type === "row" ? (p.panels ?? []) : [p],
);
const variables = dashboard.templating?.list ?? [];
const label = (p: Panel): string => `panel ${p.id ?? "?"} "${p.title ?? ""}"`;

/** Series Prometheus makes itself rather than scrapes. */
const PROMETHEUS_OWN = new Set(["up"]);

/** Words of PromQL that are neither metrics nor followed by "(" when used. */
const PROMQL_WORDS = new Set([
  "and",
  "or",
  "unless",
  "bool",
  "offset",
  "by",
  "without",
  "on",
  "ignoring",
  "group_left",
  "group_right",
  "inf",
  "nan",
]);

/**
 * The metric names in a PromQL expression: what is left of it once strings,
 * label matchers, ranges, label lists and Grafana variables are taken out,
 * less numbers, durations, keywords, and functions or aggregations (a name
 * followed by "("). A name given as {__name__="..."} counts too.
 */
function metricNames(expr: string): string[] {
  const names: string[] = [];
  for (const m of expr.matchAll(/__name__\s*=\s*"([^"]*)"/g)) names.push(m[1] ?? "");
  const bare = expr
    .replace(/"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`/g, '""')
    .replace(/\{[^}]*\}/g, " ")
    .replace(/\[[^\]]*\]/g, " ")
    .replace(/\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)/g, " ")
    .replace(/\$\{[^}]*\}|\$\w+/g, " ");
  for (const m of bare.matchAll(/[\w:.]+/g)) {
    const word = m[0];
    if (!/^[A-Za-z_:][\w:]*$/.test(word)) continue; // 0.99, 5m, 1e3
    if (PROMQL_WORDS.has(word.toLowerCase())) continue;
    if (
      bare
        .slice(m.index + word.length)
        .trimStart()
        .startsWith("(")
    )
      continue;
    names.push(word);
  }
  return names;
}

/**
 * The PromQL of a query variable (Grafana's Prometheus variable functions):
 * label_values(expr, label) and query_result(expr) query `expr`;
 * label_values(label), label_names() and metrics(re) name no metric.
 */
function variableExpr(query: string): string {
  const values = /^\s*label_values\s*\((.*),\s*\w+\s*\)\s*$/s.exec(query);
  if (values !== null) return values[1] ?? "";
  const result = /^\s*query_result\s*\((.*)\)\s*$/s.exec(query);
  if (result !== null) return result[1] ?? "";
  if (/^\s*(?:label_values|label_names|metrics)\s*\(/.test(query)) return "";
  return query;
}

/**
 * Every series name the code exports: each role's metric set made on one
 * registry, as a process playing every role would (a histogram's series
 * are its _bucket, _sum and _count; a counter's name ends in _total already).
 */
async function registeredSeries(): Promise<Map<string, string>> {
  const m = new SpendMetrics();
  producerMetrics(m);
  gatewayMetrics(m);
  budgetMetrics(m);
  flushMetrics(m);
  queueGauges(m);
  persistMetrics(m, "flush");
  persistMetrics(m, "direct");
  const series = new Map<string, string>();
  for (const metric of await m.registry.getMetricsAsJSON()) {
    const type = String(metric.type);
    const suffixes =
      type === "histogram"
        ? ["_bucket", "_sum", "_count"]
        : type === "summary"
          ? ["", "_sum", "_count"]
          : [""];
    for (const s of suffixes) series.set(metric.name + s, metric.name);
  }
  return series;
}

describe("Grafana dashboard", () => {
  it("is a dashboard by Grafana's schema (@grafana/schema's Dashboard, exactly)", () => {
    // The file, as an object literal of the schema's type, type-checked:
    // literal types and excess-property checks apply, so a misspelt field,
    // a wrong type or an enum value the schema does not have each fail.
    // Override properties are untyped in the schema (`value?: unknown`);
    // each one that sets a standard field option is checked as that option.
    const virtual = root("test/unit/.dashboard-schema.virtual.ts");
    const head = [
      'import type { FieldConfig as Field } from "@grafana/schema";',
      'import type { AsJson, DashboardFile } from "../support/grafana-dashboard.js";',
      "type FieldConfig = AsJson<Field>;",
      "export const dashboard: DashboardFile =",
    ];
    const where: string[] = [];
    const overrides: string[] = [];
    for (const p of panels)
      for (const [i, o] of (p.fieldConfig?.overrides ?? []).entries())
        for (const prop of o.properties) {
          if (prop.id.startsWith("custom.")) continue; // the panel plugin's own options
          where.push(`${label(p)}: override ${i} property "${prop.id}"`);
          overrides.push(
            `export const o${overrides.length}: FieldConfig[${JSON.stringify(prop.id)}] = ${JSON.stringify(prop.value ?? null)};`,
          );
        }
    const source = [...head, dashboardText.trimEnd() + ";", ...overrides, ""].join("\n");
    const firstOverrideLine = head.length + dashboardText.trimEnd().split("\n").length;
    const options: ts.CompilerOptions = {
      target: ts.ScriptTarget.ES2022,
      module: ts.ModuleKind.NodeNext,
      moduleResolution: ts.ModuleResolutionKind.NodeNext,
      strict: true,
      noEmit: true,
      skipLibCheck: true,
      types: [],
      lib: ["lib.es2022.d.ts"],
    };
    const host = ts.createCompilerHost(options);
    const read = host.readFile.bind(host);
    host.readFile = (f) => (f === virtual ? source : read(f));
    const exists = host.fileExists.bind(host);
    host.fileExists = (f) => f === virtual || exists(f);
    const program = ts.createProgram([virtual], options, host);
    const all = ts.getPreEmitDiagnostics(program);
    const problems = all
      .filter((d) => d.file?.fileName === virtual)
      .map((d) => {
        const { line } = d.file?.getLineAndCharacterOfPosition(d.start ?? 0) ?? { line: 0 };
        const at =
          line >= firstOverrideLine
            ? (where[line - firstOverrideLine] ?? "?")
            : `${DASHBOARD}:${line - head.length + 1}`;
        return `${at}: ${ts.flattenDiagnosticMessageText(d.messageText, " ")}`;
      });
    assert.deepEqual(problems, []);
    // Anything else (the schema's package missing, a broken support type) fails too.
    assert.deepEqual(
      all.map((d) => ts.flattenDiagnosticMessageText(d.messageText, " ")),
      [],
    );
  });

  it("extracts metric names from PromQL", () => {
    assert.deepEqual(
      metricNames(
        'histogram_quantile(0.99, sum by (le) (rate(a_bucket{x="y", z=~"a|b"}[$__rate_interval]))) and b > 0',
      ),
      ["a_bucket", "b"],
    );
    assert.deepEqual(metricNames("deriv(max(c)[10m:1m]) > 0.5"), ["c"]);
    assert.deepEqual(metricNames("sum(max(d) by (instance)) / on (job) group_left e offset 5m"), [
      "d",
      "e",
    ]);
    assert.deepEqual(metricNames('{__name__="f", job="x"} * 1e3 + g @ start()'), ["f", "g"]);
    assert.deepEqual(metricNames("sum without (pod) (h:rate5m)"), ["h:rate5m"]);
    assert.equal(
      variableExpr('label_values(spend_queue_jobs{state="x"}, queue)'),
      'spend_queue_jobs{state="x"}',
    );
    assert.equal(variableExpr("label_values(instance)"), "");
  });

  it("queries only metrics the code registers", async () => {
    const series = await registeredSeries();
    const unknown = (names: string[]): string[] =>
      names.filter((n) => !series.has(n) && !PROMETHEUS_OWN.has(n));
    const problems: string[] = [];
    const shown = new Set<string>();
    for (const p of panels) {
      if ((p.targets ?? []).length === 0) problems.push(`${label(p)}: no query`);
      for (const t of p.targets ?? []) {
        const names = metricNames(t.expr ?? "");
        if (names.length === 0)
          problems.push(`${label(p)} ${t.refId ?? "?"}: no metric in "${t.expr ?? ""}"`);
        for (const n of unknown(names))
          problems.push(`${label(p)} ${t.refId ?? "?"}: ${n} is not registered`);
        for (const n of names) shown.add(series.get(n) ?? n);
      }
    }
    for (const v of variables.filter((x) => x.type === "query")) {
      const q = typeof v.query === "string" ? v.query : (v.query?.query ?? "");
      for (const n of unknown(metricNames(variableExpr(q))))
        problems.push(`variable ${v.name}: ${n} is not registered`);
    }
    assert.deepEqual(problems, []);
    // What an operator needs to see has a panel: the metrics this issue added.
    for (const name of [
      "spend_dead_letters_total",
      "spend_dead_lettered_rows_total",
      "spend_flush_isolations_total",
      "spend_redis_repairs_total",
      "litellm_pod_lock_manager_size",
      "spend_poison_jobs_total",
      "spend_fencing_rejections_total",
    ])
      assert.ok(shown.has(name), `no panel shows ${name}`);
  });

  it("gives every panel a unique id, a place of its own, and the dashboard's datasource", () => {
    const ds = variables.filter((v) => v.type === "datasource" && v.query === "prometheus");
    assert.equal(ds.length, 1, "one Prometheus datasource variable");
    const uids = new Set([`\${${ds[0]?.name ?? ""}}`, `$${ds[0]?.name ?? ""}`]);
    const ids = new Map<number, string>();
    for (const p of dashboard.panels ?? []) {
      assert.ok(typeof p.id === "number", `${label(p)}: an id`);
      for (const q of [p, ...(p.panels ?? [])]) {
        const id = q.id ?? -1;
        assert.ok(!ids.has(id), `${label(q)}: id ${id} is also ${ids.get(id) ?? ""}'s`);
        ids.set(id, label(q));
      }
    }
    for (const p of panels) {
      assert.equal(p.datasource?.type, "prometheus", `${label(p)}: datasource type`);
      assert.ok(
        uids.has(p.datasource?.uid ?? ""),
        `${label(p)}: datasource ${p.datasource?.uid ?? "none"}`,
      );
      const refIds = new Set<string>();
      for (const t of p.targets ?? []) {
        assert.ok(
          t.refId !== undefined && !refIds.has(t.refId),
          `${label(p)}: refId ${t.refId ?? "none"}`,
        );
        refIds.add(t.refId);
        assert.equal(t.datasource?.type, "prometheus", `${label(p)} ${t.refId}: datasource type`);
        assert.ok(uids.has(t.datasource?.uid ?? ""), `${label(p)} ${t.refId}: datasource`);
      }
    }
    // The grid is 24 columns wide; no panel covers another.
    const placed = (dashboard.panels ?? []).map((p) => ({ p, g: p.gridPos }));
    for (const [i, { p, g }] of placed.entries()) {
      assert.ok(g !== undefined, `${label(p)}: gridPos`);
      assert.ok(g.x >= 0 && g.w > 0 && g.h > 0 && g.x + g.w <= 24, `${label(p)}: within the grid`);
      for (const { p: q, g: h } of placed.slice(i + 1)) {
        if (h === undefined) continue;
        const apart: boolean =
          g.x + g.w <= h.x || h.x + h.w <= g.x || g.y + g.h <= h.y || h.y + h.h <= g.y;
        assert.ok(apart, `${label(p)} and ${label(q)} overlap`);
      }
    }
  });

  it("formats as a date only values that are timestamps", () => {
    const isDate = (unit: unknown): boolean =>
      typeof unit === "string" && unit.startsWith("dateTime");
    const timestamp = (t: Target | undefined): boolean =>
      /_timestamp_seconds\b/.test(t?.expr ?? "");
    for (const p of panels) {
      const targets = p.targets ?? [];
      if (isDate(p.fieldConfig?.defaults.unit))
        for (const t of targets)
          assert.ok(
            timestamp(t),
            `${label(p)}: a date unit for every field, and ${t.refId ?? "?"} is no timestamp`,
          );
      for (const o of p.fieldConfig?.overrides ?? []) {
        if (!o.properties.some((prop) => prop.id === "unit" && isDate(prop.value))) continue;
        // Which query's values it formats: "Value #A" (a table's column) or the frame of refId A.
        const opt = typeof o.matcher.options === "string" ? o.matcher.options : "";
        const refId = o.matcher.id === "byFrameRefID" ? opt : /^Value #(\w+)$/.exec(opt)?.[1];
        assert.ok(refId !== undefined, `${label(p)}: a date unit for "${opt}": which query?`);
        assert.ok(
          timestamp(targets.find((t) => t.refId === refId)),
          `${label(p)}: ${refId} is formatted as a date but is no timestamp`,
        );
      }
    }
  });

  it("is provisioned, with its datasource, where the compose deployment's Grafana looks", () => {
    const compose = parse(readFileSync(root("docker-compose.yml"), "utf8")) as {
      services: Record<string, { volumes?: string[] }>;
    };
    const mounts = new Map(
      (compose.services.grafana?.volumes ?? []).map((v) => {
        const [host = "", container = ""] = v.split(":");
        return [posix.normalize(container), posix.normalize(host)] as const;
      }),
    );
    // Grafana reads its provisioning from /etc/grafana/provisioning.
    const provisioning = mounts.get("/etc/grafana/provisioning");
    assert.equal(provisioning, "deploy/grafana/provisioning");
    const providers = parse(
      readFileSync(root(`${provisioning}/dashboards/spend-buffer.yml`), "utf8"),
    ) as { apiVersion: number; providers: { type: string; options: { path: string } }[] };
    assert.equal(providers.apiVersion, 1);
    assert.equal(providers.providers.length, 1);
    const provider = providers.providers[0];
    assert.equal(provider?.type, "file");
    const hostDir = mounts.get(posix.normalize(provider.options.path));
    assert.ok(hostDir !== undefined, `${provider.options.path} is mounted from this repository`);
    assert.equal(posix.join(hostDir, "spend-buffer.json"), DASHBOARD);
    assert.ok(existsSync(root(DASHBOARD)));
    // The datasource variable's current value is the provisioned Prometheus.
    const sources = parse(
      readFileSync(root(`${provisioning}/datasources/prometheus.yml`), "utf8"),
    ) as { datasources: { name: string; uid: string; type: string }[] };
    const v = variables.find((x) => x.type === "datasource");
    const prometheus = sources.datasources.find((s) => s.uid === v?.current?.value);
    assert.ok(prometheus !== undefined, `datasource ${String(v?.current?.value)} is provisioned`);
    assert.equal(prometheus.type, "prometheus");
    assert.equal(v?.current?.text, prometheus.name);
  });
});

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { after, before, describe, it } from "node:test";
import { parse } from "yaml";
import { createTestDatabase, type TestDatabase } from "../support/db.js";
import { budgetMetrics } from "../../src/budget/budget-metrics.js";
import { gatewayMetrics } from "../../src/gateway/gateway-metrics.js";
import { Harness } from "../support/harness.js";
import { cleanRedis, testConfig, uniquePrefix } from "../support/redis.js";
import { REPO_ROOT } from "../support/paths.js";

const root = pathToFileURL(join(REPO_ROOT, "deploy") + "/");
const read = (path: string): string => readFileSync(new URL(path, root), "utf8");

/** Series Prometheus makes itself, not this project's registry. */
const PROMETHEUS_OWN = new Set(["up"]);
const KEYWORDS = new Set(["and", "or", "unless", "bool", "offset", "inf", "nan"]);

/** Metric names in a PromQL expression: identifiers that are neither functions, labels nor keywords. */
export function metricNames(expr: string): string[] {
  const stripped = expr
    .replace(/"(?:[^"\\]|\\.)*"/g, " ")
    .replace(/\{[^}]*\}/g, " ")
    .replace(/\[[^\]]*\]/g, " ")
    .replace(/\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)/g, " ")
    .replace(/\$\w+/g, " ");
  const out: string[] = [];
  for (const m of stripped.matchAll(/[A-Za-z_:][A-Za-z0-9_:]*/g)) {
    const after = stripped.slice((m.index ?? 0) + m[0].length).trimStart();
    if (after.startsWith("(")) continue; // a function or aggregation
    if (KEYWORDS.has(m[0].toLowerCase())) continue;
    out.push(m[0]);
  }
  return out;
}

interface Panel {
  title: string;
  datasource?: { uid?: string };
  targets?: { expr: string; datasource?: { uid?: string } }[];
}
interface Rule {
  alert: string;
  expr: string;
  labels?: { severity?: string };
  annotations?: { summary?: string };
}

describe("observability assets", () => {
  let t: TestDatabase;
  let h: Harness;
  /** Every series name the registry exposes after one real flush (histogram suffixes included). */
  const live = new Set<string>();
  const prefix = uniquePrefix("assets");

  before(async () => {
    t = await createTestDatabase("obs_assets");
    h = new Harness(testConfig(prefix, t.url), t.db);
    const p = await h.producer();
    p.record({ spend: 1, apiKey: "k", userId: "u", teamId: "t", tags: ["x"] });
    await p.flush();
    assert.equal((await h.flusher().flushOnce()).outcome, "committed");
    // What a gateway registers besides its producer's (the harness is a producer and a worker).
    gatewayMetrics(h.metrics);
    budgetMetrics(h.metrics);
    for (const m of await h.metrics.registry.getMetricsAsJSON()) {
      live.add(m.name);
      if (m.type.toString() === "histogram")
        for (const s of ["_bucket", "_sum", "_count"]) live.add(m.name + s);
    }
    await p.close();
  });
  after(async () => {
    await h.close();
    await cleanRedis(prefix);
    await t.drop();
  });

  it("extracts metric names from PromQL", () => {
    assert.deepEqual(
      metricNames(
        'histogram_quantile(0.99, sum by (le) (rate(a_bucket{x="y"}[$__rate_interval]))) and b > 0',
      ),
      ["a_bucket", "b"],
    );
    assert.deepEqual(metricNames("deriv(max(c)[10m:1m]) > 0.5"), ["c"]);
  });

  it("the dashboard is importable and uses only metrics the registry exposes", () => {
    const dash = JSON.parse(read("grafana/dashboards/spend-buffer.json")) as {
      uid: string;
      title: string;
      __inputs: { name: string; pluginId: string }[];
      templating: { list: { name: string; type: string; query: string }[] };
      panels: Panel[];
    };
    assert.equal(dash.uid, "spend-buffer");
    assert.ok(dash.__inputs.some((i) => i.name === "DS_PROMETHEUS" && i.pluginId === "prometheus"));
    assert.ok(
      dash.templating.list.some(
        (v) => v.name === "DS_PROMETHEUS" && v.type === "datasource" && v.query === "prometheus",
      ),
    );
    assert.ok(dash.panels.length >= 12);
    const used = new Set<string>();
    for (const p of dash.panels) {
      assert.equal(p.datasource?.uid, "${DS_PROMETHEUS}", `panel "${p.title}" datasource`);
      assert.ok((p.targets ?? []).length > 0, `panel "${p.title}" has queries`);
      for (const target of p.targets ?? []) {
        assert.equal(target.datasource?.uid, "${DS_PROMETHEUS}");
        const names = metricNames(target.expr);
        assert.ok(names.length > 0, `no metric in ${target.expr}`);
        for (const n of names) {
          used.add(n);
          assert.ok(live.has(n), `panel "${p.title}": ${n} is not in the registry`);
        }
      }
    }
    for (const needed of [
      "spend_events_recorded_total",
      "spend_events_rejected_total",
      "litellm_in_memory_spend_update_queue_size",
      "litellm_redis_spend_update_queue_size",
      "spend_backlog_age_seconds",
      "spend_flushes_total",
      "spend_flush_duration_seconds_bucket",
      "spend_rows_committed_total",
      "spend_lock_last_acquired_timestamp_seconds",
      "spend_fencing_rejections_total",
      "spend_transaction_retries_total",
    ])
      assert.ok(used.has(needed), `the dashboard shows ${needed}`);
  });

  it("the alert rules parse and use only metrics the registry exposes", () => {
    const rules = parse(read("prometheus/alerts.yml")) as {
      groups: { name: string; rules: Rule[] }[];
    };
    const all = rules.groups.flatMap((g) => g.rules);
    const names = new Set(all.map((r) => r.alert));
    for (const a of [
      "SpendNoSuccessfulFlush",
      "SpendBacklogAgeGrowing",
      "SpendLockFlapping",
      "SpendEventsRejected",
    ])
      assert.ok(names.has(a), `alert ${a}`);
    for (const r of all) {
      assert.ok(r.labels?.severity, `${r.alert} has a severity`);
      assert.ok(r.annotations?.summary, `${r.alert} has a summary`);
      for (const n of metricNames(r.expr))
        assert.ok(
          live.has(n) || PROMETHEUS_OWN.has(n),
          `alert ${r.alert}: ${n} is not in the registry`,
        );
    }
  });

  it("Prometheus scrapes the workers and gateways and loads the rules; Grafana is provisioned", () => {
    const prom = parse(read("prometheus/prometheus.yml")) as {
      rule_files: string[];
      scrape_configs: { job_name: string; dns_sd_configs?: { names: string[]; port: number }[] }[];
    };
    // Relative, so the same file works in the container and in a checkout.
    assert.deepEqual(prom.rule_files, ["alerts.yml"]);
    // The worker serves /metrics on its metrics port, the gateway on its HTTP port.
    for (const [job, port] of [
      ["flush-worker", 9464],
      ["gateway", 4000],
    ] as const) {
      const c = prom.scrape_configs.find((s) => s.job_name === job);
      assert.deepEqual(c?.dns_sd_configs?.[0], {
        ...c?.dns_sd_configs?.[0],
        names: [job],
        port,
      });
    }
    const ds = parse(read("grafana/provisioning/datasources/prometheus.yml")) as {
      datasources: { type: string; url: string }[];
    };
    assert.equal(ds.datasources[0]?.type, "prometheus");
    assert.equal(ds.datasources[0]?.url, "http://prometheus:9090");
    const dp = parse(read("grafana/provisioning/dashboards/spend-buffer.yml")) as {
      providers: { type: string; options: { path: string } }[];
    };
    assert.equal(dp.providers[0]?.options.path, "/var/lib/grafana/dashboards");
  });
});

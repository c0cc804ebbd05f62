import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import { describe, it } from "node:test";
import { join } from "node:path";
import { parse } from "yaml";
import { subcommands } from "../../src/cli/program.js";
import { loadConfig } from "../../src/config/config.js";
import { REPO_ROOT } from "../support/paths.js";

/**
 * No Docker engine runs where this is developed, so the deployment file is
 * checked here instead: every service's command must point at a file this
 * repository has, every dependency must exist, and the settings the
 * guarantees depend on (AOF, noeviction, health checks) must be there.
 */
const root = (p: string): string => join(REPO_ROOT, p);

interface Service {
  image?: string;
  build?: string;
  command?: string[];
  depends_on?: Record<string, { condition: string }>;
  healthcheck?: { test: string[] };
  ports?: string[];
  deploy?: { replicas?: number };
  environment?: Record<string, string>;
  volumes?: string[];
  restart?: string;
}

const compose = parse(readFileSync(root("docker-compose.yml"), "utf8"), { merge: true }) as {
  services: Record<string, Service>;
};
const services = compose.services;
const APP = ["migrate", "flush-worker", "gateway"];

describe("docker-compose.yml", () => {
  it("gives no secret a default: compose refuses to start until each is set", () => {
    const text = readFileSync(root("docker-compose.yml"), "utf8");
    const secrets = [...text.matchAll(/\$\{([A-Z_]*(?:PASSWORD|MASTER_KEY)[A-Z_]*)([^}]*)\}/g)];
    assert.ok(secrets.length >= 5, "the secrets are variables");
    for (const [whole, name, rest] of secrets) {
      // `$${NAME}` is the container's own shell reading what compose set.
      if (text.includes(`$${whole}`)) continue;
      assert.match(
        rest ?? "",
        /^:\?/,
        `${name} must be required (\${${name}:?...}), not defaulted`,
      );
    }
    // The workers' admin port reaches the host on loopback only.
    assert.deepEqual(services["flush-worker"]?.ports, ["127.0.0.1::9464"]);
  });

  it("has the seed's topology: Redis, PostgreSQL, migration, two workers, three gateways", () => {
    assert.deepEqual(Object.keys(services).sort(), [
      "flush-worker",
      "gateway",
      "grafana",
      "migrate",
      "postgres",
      "prometheus",
      "redis",
    ]);
    assert.equal(services["flush-worker"]?.deploy?.replicas, 2);
    assert.equal(services.gateway?.deploy?.replicas, 3);
  });

  it("runs every app service from this repository's image, on files that exist", () => {
    assert.ok(existsSync(root("Dockerfile")));
    for (const name of APP) {
      const s = services[name];
      assert.ok(s !== undefined, name);
      assert.equal(s.build, ".", `${name} builds this repository`);
    }
    // The image runs the compiled CLI with plain node: no tsx, no dev dependency.
    const dockerfile = readFileSync(root("Dockerfile"), "utf8");
    const stages = dockerfile.split(/^FROM /m);
    const runtime = stages[stages.length - 1] ?? "";
    assert.match(runtime, /^ENTRYPOINT \["node", "dist\/cli\/main\.js"\]$/m);
    assert.match(runtime, /npm ci --omit=dev/);
    assert.doesNotMatch(runtime, /tsx/);
    const pkg = JSON.parse(readFileSync(root("package.json"), "utf8")) as {
      bin: Record<string, string>;
      dependencies: Record<string, string>;
      devDependencies: Record<string, string>;
    };
    assert.equal(pkg.bin["haimaker-spend"], "dist/cli/main.js");
    assert.equal(pkg.dependencies.tsx, undefined, "tsx is a dev dependency only");
    assert.ok(pkg.devDependencies.tsx !== undefined);
  });

  it("runs each app service as a real subcommand of the CLI", () => {
    const known = subcommands();
    const expected: Record<string, string> = {
      migrate: "migrate",
      "flush-worker": "worker",
      gateway: "gateway",
    };
    for (const name of APP) {
      // The image's entrypoint is the CLI: a command is its arguments.
      const cmd = services[name]?.command ?? [];
      const args = cmd.filter((a) => !a.startsWith("-"));
      const sub = known.find((k) => args.slice(0, k.split(" ").length).join(" ") === k);
      assert.ok(
        sub !== undefined,
        `${name}: "${args.join(" ")}" is a CLI subcommand (${known.join(", ")})`,
      );
      assert.equal(sub, expected[name], name);
    }
  });

  it("starts nothing before its dependencies are ready", () => {
    for (const [name, s] of Object.entries(services)) {
      for (const [dep, { condition }] of Object.entries(s.depends_on ?? {})) {
        assert.ok(services[dep] !== undefined, `${name} depends on unknown ${dep}`);
        if (condition === "service_healthy")
          assert.ok(services[dep]?.healthcheck !== undefined, `${dep} needs a health check`);
      }
    }
    assert.equal(
      services["flush-worker"]?.depends_on?.migrate?.condition,
      "service_completed_successfully",
    );
    assert.equal(
      services.gateway?.depends_on?.migrate?.condition,
      "service_completed_successfully",
    );
    assert.equal(services.migrate?.restart, "no");
  });

  it("keeps the Redis buffer durable and never evicts spend", () => {
    const cmd = (services.redis?.command ?? []).join(" ");
    assert.match(cmd, /--appendonly yes/);
    assert.match(cmd, /--maxmemory-policy noeviction/);
    assert.ok(services.redis?.volumes?.some((v) => v.endsWith(":/data")));
  });

  it("health-checks every long-running app service on the port its process serves", () => {
    const cfg = loadConfig(root("deploy/proxy_config.yaml"), {
      REDIS_PASSWORD: "x",
      LITELLM_MASTER_KEY: "sk-x-long-enough",
      ADMIN_PASSWORD: "x",
    });
    const worker = (services["flush-worker"]?.healthcheck?.test ?? []).join(" ");
    assert.match(worker, new RegExp(`127\\.0\\.0\\.1:${cfg.metricsPort}/health/readiness`));
    const gateway = (services.gateway?.healthcheck?.test ?? []).join(" ");
    assert.match(gateway, new RegExp(`127\\.0\\.0\\.1:${cfg.gateway.port}/health/readiness`));
    assert.equal(
      services.gateway?.environment?.METRICS_PORT,
      undefined,
      "the gateway serves /metrics on its own port",
    );
  });

  it("publishes the gateway's port, one host port per replica", () => {
    const ports = services.gateway?.ports ?? [];
    assert.equal(ports.length, 1);
    const m = /^\$\{[A-Z_]+:-(\d+)-(\d+)\}:(\d+)$/.exec(ports[0] ?? "");
    assert.ok(m !== null, `ports: ${ports.join(", ")}`);
    assert.equal(Number(m[2]) - Number(m[1]) + 1, services.gateway?.deploy?.replicas);
    assert.equal(m[3], "4000");
  });

  it("mounts a configuration file that the app accepts", () => {
    const volume = services["flush-worker"]?.volumes?.[0] ?? "";
    const hostPath = volume.split(":")[0] ?? "";
    const env = {
      REDIS_PASSWORD: "x",
      LITELLM_MASTER_KEY: "sk-x-long-enough",
      ADMIN_PASSWORD: "x",
    };
    const cfg = loadConfig(root(hostPath), env);
    assert.equal(cfg.useRedisBuffer, true);
    assert.equal(cfg.redis.host, "redis");
    assert.equal(cfg.masterKey, "sk-x-long-enough");
    assert.ok(cfg.gateway.modelPrices.size > 0, "the gateway has prices");
    assert.equal(
      cfg.admin.auth && cfg.admin.username !== undefined,
      true,
      "Bull Board needs credentials",
    );
    // Every secret the file references is set by docker-compose.yml.
    const appEnv = services["flush-worker"]?.environment ?? {};
    for (const name of Object.keys(env))
      assert.ok(name in appEnv, `${name} is set for the app services`);
  });

  it("wires Prometheus and Grafana to files this repository has, scraping the app services", () => {
    for (const name of ["prometheus", "grafana"]) {
      for (const v of services[name]?.volumes ?? []) {
        const host = v.split(":")[0] ?? "";
        if (host.startsWith("./"))
          assert.ok(existsSync(root(host.slice(2))), `${name}: ${host} exists`);
      }
    }
    const prom = parse(readFileSync(root("deploy/prometheus/prometheus.yml"), "utf8")) as {
      scrape_configs: { dns_sd_configs?: { names: string[]; port?: number }[] }[];
    };
    const scraped = prom.scrape_configs.flatMap((c) =>
      (c.dns_sd_configs ?? []).flatMap((d) => d.names),
    );
    for (const svc of ["flush-worker", "gateway"])
      assert.ok(scraped.includes(svc), `${svc} is scraped`);
  });
});

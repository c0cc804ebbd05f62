import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import { describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { parse } from "yaml";
import { loadConfig } from "../src/config/config.js";

/**
 * No Docker engine runs where this is developed, so the deployment file is
 * checked here instead: every service's command must point at a file this
 * repository has, every dependency must exist, and the settings the
 * guarantees depend on (AOF, noeviction, health checks) must be there.
 */
const root = (p: string): string => fileURLToPath(new URL(`../${p}`, import.meta.url));

interface Service {
  image?: string;
  build?: string;
  command?: string[];
  depends_on?: Record<string, { condition: string }>;
  healthcheck?: { test: string[] };
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
  it("has the seed's topology: Redis, PostgreSQL, migration, two workers, three gateways", () => {
    assert.deepEqual(Object.keys(services).sort(), [
      "flush-worker",
      "gateway",
      "migrate",
      "postgres",
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
      const cmd = s.command ?? [];
      assert.deepEqual(
        cmd.slice(0, 3),
        ["node", "--import", "tsx"],
        `${name} runs TypeScript through tsx`,
      );
      const entry = cmd[3] ?? "";
      assert.ok(existsSync(root(entry)), `${name}: ${entry} exists`);
    }
    assert.deepEqual(services.migrate?.command?.slice(3), ["src/persist/migrate-cli.ts", "deploy"]);
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
    for (const name of ["flush-worker", "gateway"]) {
      const test = (services[name]?.healthcheck?.test ?? []).join(" ");
      assert.match(test, /127\.0\.0\.1:9464\/health\/liveliness/, name);
    }
    assert.equal(services.gateway?.environment?.METRICS_PORT, "9464");
  });

  it("mounts a configuration file that the app accepts", () => {
    const volume = services["flush-worker"]?.volumes?.[0] ?? "";
    const hostPath = volume.split(":")[0] ?? "";
    const cfg = loadConfig(root(hostPath), { REDIS_PASSWORD: "x" });
    assert.equal(cfg.useRedisBuffer, true);
    assert.equal(cfg.redis.host, "redis");
  });
});

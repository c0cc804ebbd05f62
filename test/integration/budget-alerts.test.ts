import assert from "node:assert/strict";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { after, before, describe, it } from "node:test";
import { buildConfig } from "../../src/config/config.js";
import { startGateway, type GatewayService } from "../../src/gateway/gateway.js";
import { createKey, type CreatedKey } from "../../src/gateway/virtual-keys.js";
import { createTestDatabase, type TestDatabase } from "../support/db.js";
import { cleanRedis, TEST_REDIS_URL, uniquePrefix } from "../support/redis.js";
import { waitFor } from "../support/wait.js";

const MASTER = "sk-master-budget-alerts";

/**
 * Threshold alerts: three gateways spend one team's budget concurrently; the
 * soft budget, half the budget and all of it are each sent to the webhook
 * exactly once for the period, whichever gateway crossed it, and delivered
 * despite the receiver failing its first attempts.
 */
describe("budget threshold alerts: once per period across gateways, to a webhook, with retries", () => {
  let t: TestDatabase;
  let webhook: Server;
  let key: CreatedKey;
  const gateways: GatewayService[] = [];
  const prefix = uniquePrefix("budget-alerts");
  /** Every attempt the receiver saw, by alert id, and the bodies it accepted. */
  const attempts = new Map<string, number>();
  const accepted: Record<string, unknown>[] = [];

  before(async () => {
    t = await createTestDatabase("budget_alerts");
    webhook = createServer((req, res) => {
      let text = "";
      req.on("data", (d: Buffer) => (text += d.toString()));
      req.on("end", () => {
        const body = JSON.parse(text) as Record<string, unknown>;
        const id = String(body.id);
        const n = (attempts.get(id) ?? 0) + 1;
        attempts.set(id, n);
        // The first two attempts at each alert fail: delivery must retry.
        if (n <= 2) {
          res.writeHead(500).end();
          return;
        }
        accepted.push(body);
        res.writeHead(204).end();
      });
    });
    await new Promise<void>((r) => webhook.listen(0, "127.0.0.1", r));
    const url = `http://127.0.0.1:${(webhook.address() as AddressInfo).port}/hooks/budget`;
    const config = buildConfig(
      {
        general_settings: {
          use_redis_transaction_buffer: true,
          proxy_batch_write_at: 0.2,
          master_key: MASTER,
        },
        litellm_settings: { cache: true, cache_params: { type: "redis" } },
        spend_buffer_settings: {
          key_prefix: prefix,
          budget_refresh_seconds: 0.05,
          budget_lease_fraction: 0.05,
          budget_alert_thresholds: [0.5, 1],
          budget_webhook_url: url,
          model_prices: {
            "mock-small": {
              input_cost_per_token: "0.0000001",
              output_cost_per_token: "0.0000003",
            },
          },
        },
      },
      { REDIS_URL: TEST_REDIS_URL, DATABASE_URL: t.url },
    );
    key = await createKey(t.db, { userId: "alert-user", teamId: "alert-team" });
    for (let i = 0; i < 3; i++)
      gateways.push(await startGateway(config, { port: 0, host: "127.0.0.1" }));
  });
  after(async () => {
    for (const g of gateways) await g.close().catch(() => undefined);
    webhook.close();
    await cleanRedis(prefix);
    await t.drop();
  });

  it("sends soft_budget, 50% and 100% once each, whichever gateway crossed them", async () => {
    const res = await fetch(`http://127.0.0.1:${gateways[0]?.port ?? 0}/team/new`, {
      method: "POST",
      headers: { authorization: `Bearer ${MASTER}`, "content-type": "application/json" },
      // 40 requests of 0.0000016 USD; the soft budget is a quarter of it.
      body: JSON.stringify({
        team_id: "alert-team",
        max_budget: "0.000064",
        soft_budget: "0.000016",
      }),
    });
    assert.equal(res.status, 200, await res.text());
    await new Promise((r) => setTimeout(r, 200));
    await Promise.all(
      gateways.flatMap((g) =>
        Array.from({ length: 4 }, async () => {
          for (let refused = 0; refused < 3;) {
            const r = await fetch(`http://127.0.0.1:${g.port}/v1/chat/completions`, {
              method: "POST",
              headers: { authorization: `Bearer ${key.key}`, "content-type": "application/json" },
              body: JSON.stringify({
                model: "mock-small",
                messages: [{ role: "user", content: "a b c d" }],
              }),
            });
            await r.arrayBuffer();
            if (r.status === 400) refused++;
            else if (r.status === 503) await new Promise((w) => setTimeout(w, 5));
          }
        }),
      ),
    );
    await waitFor(
      "three alerts delivered",
      () => accepted.length >= 3,
      10_000,
      50,
      () => JSON.stringify([...attempts]),
    );
    // Longer than a refresh and a retry: nothing more arrives.
    await new Promise((r) => setTimeout(r, 1_500));
    assert.deepEqual(accepted.map((a) => a.threshold).sort(), ["100%", "50%", "soft_budget"]);
    assert.equal(new Set(accepted.map((a) => a.id)).size, 3, "each alert once");
    for (const a of accepted) {
      assert.equal(a.entity_kind, "team");
      assert.equal(a.entity_id, "alert-team");
      assert.equal(a.max_budget, "0.000064000000");
    }
    const rows = await t.db.spendBudgetAlert.findMany({ where: { entityId: "alert-team" } });
    assert.equal(rows.length, 3);
    assert.ok(rows.every((r) => r.deliveredAt !== null));
    // Retried by whichever gateway raised each alert.
    let retried = 0;
    for (const g of gateways) {
      const text = await (await fetch(`http://127.0.0.1:${g.port}/metrics`)).text();
      retried += Number(
        /^budget_webhook_deliveries_total\{outcome="retried"\} (\d+)/m.exec(text)?.[1],
      );
    }
    assert.equal(retried, 6, "two failed attempts at each of three alerts");
  });
});

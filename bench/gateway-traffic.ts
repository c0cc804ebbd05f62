/**
 * The requests section 1 sends to the reference gateway: the typical chat
 * exchange of referenceExchange() (a four-message conversation), from keys
 * that each belong to a user, team and org, with an end user and two tags
 * drawn from the benchmark's Zipf-like spread.
 */
import { buildConfig, type AppConfig } from "../src/config/config.js";
import { rng, skewed, type TrafficShape } from "../src/demo/traffic.js";
import { createKey, type CreatedKey } from "../src/gateway/virtual-keys.js";
import type { Db } from "../src/persist/prisma.js";
import { TEST_REDIS_URL } from "../test/support/redis.js";

/** A model the mock answers, priced like gpt-4o. */
export const GATEWAY_MODEL = "mock-gpt-4o";
export const GATEWAY_PRICE = {
  input_cost_per_token: "0.0000025",
  output_cost_per_token: "0.00001",
};

export interface GatewayRequest {
  authorization: string;
  body: Buffer;
}

/** The reference gateway's virtual keys: key k belongs to user k, team k and that team's org (modulo the shape). */
export async function createGatewayKeys(
  db: Db,
  n: number,
  shape: TrafficShape,
): Promise<CreatedKey[]> {
  const keys: CreatedKey[] = [];
  for (let k = 0; k < n; k++) {
    const team = k % shape.teams;
    keys.push(
      await createKey(db, {
        userId: `user-${k % shape.users}`,
        teamId: `team-${team}`,
        organizationId: `org-${team % shape.orgs}`,
      }),
    );
  }
  return keys;
}

export function gatewayRequests(
  n: number,
  seed: number,
  shape: TrafficShape,
  keys: readonly string[],
  exchangeRequest: string,
): GatewayRequest[] {
  const r = rng(seed);
  const template = JSON.parse(exchangeRequest) as Record<string, unknown>;
  const out: GatewayRequest[] = [];
  for (let i = 0; i < n; i++) {
    const key = keys[skewed(r, keys.length)] ?? "";
    const body = {
      ...template,
      model: GATEWAY_MODEL,
      user: `end-user-${skewed(r, shape.endUsers)}`,
      metadata: {
        tags: [r() < 0.8 ? "env:prod" : "env:dev", `feature:${Math.floor(r() * shape.tags)}`],
      },
    };
    out.push({ authorization: `Bearer ${key}`, body: Buffer.from(JSON.stringify(body)) });
  }
  return out;
}

/**
 * The reference gateway's configuration: the producer's defaults (the seal
 * interval and jitter of the configuration schema), what a gateway runs. The parent reads its seal
 * interval from here too, to size a rep.
 */
export function gatewayConfig(keyPrefix: string, databaseUrl: string): AppConfig {
  return buildConfig(
    {
      general_settings: { use_redis_transaction_buffer: true },
      litellm_settings: { cache: true, cache_params: { type: "redis" } },
      spend_buffer_settings: {
        key_prefix: keyPrefix,
        model_prices: { [GATEWAY_MODEL]: GATEWAY_PRICE },
      },
    },
    { REDIS_URL: TEST_REDIS_URL, DATABASE_URL: databaseUrl },
  );
}

/** Mean time between a gateway's seals: the interval less half the jitter (which shortens it). */
export function meanSealIntervalMs(config: AppConfig): number {
  const jitter = Math.min(config.producer.flushJitterMs, config.producer.flushIntervalMs / 2);
  return config.producer.flushIntervalMs - jitter / 2;
}

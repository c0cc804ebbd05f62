import type { SpendEvent } from "../produce/spend-event.js";

/**
 * Deterministic synthetic gateway traffic: a seeded generator, so a test can
 * replay exactly what a producer process recorded, and a skewed spread (a
 * few hot keys, a long tail) like real gateways see.
 */
export interface TrafficShape {
  keys: number;
  users: number;
  teams: number;
  orgs: number;
  endUsers: number;
  tags: number;
  /** Fraction of requests that fail (still charged). */
  failureRate: number;
}

export const DEMO_SHAPE: TrafficShape = {
  keys: 50,
  users: 40,
  teams: 8,
  orgs: 3,
  endUsers: 100,
  tags: 6,
  failureRate: 0.05,
};

const MODELS = [
  { model: "gpt-4o", group: "gpt-4o", provider: "openai", inUsd: 0.0000025, outUsd: 0.00001 },
  {
    model: "gpt-4o-mini",
    group: "gpt-4o-mini",
    provider: "openai",
    inUsd: 0.00000015,
    outUsd: 0.0000006,
  },
  {
    model: "claude-sonnet-4",
    group: "claude",
    provider: "anthropic",
    inUsd: 0.000003,
    outUsd: 0.000015,
  },
  {
    model: "mistral-large",
    group: "mistral",
    provider: "mistral",
    inUsd: 0.000002,
    outUsd: 0.000006,
  },
] as const;

/** mulberry32: tiny, fast, good enough for test traffic, and seedable. */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4_294_967_296;
  };
}

/** Picks 0..n-1 with a Zipf-like skew: index i has weight ~ 1/(i+1). */
export function skewed(r: () => number, n: number): number {
  return Math.min(n - 1, Math.floor(Math.exp(r() * Math.log(n + 1))) - 1);
}

export function trafficGenerator(
  seed: number,
  shape: TrafficShape = DEMO_SHAPE,
  now: () => number = Date.now,
): () => SpendEvent {
  const r = rng(seed);
  return () => {
    const k = skewed(r, shape.keys);
    // A key belongs to one user, team and org, as in a real gateway.
    const user = k % shape.users;
    const team = k % shape.teams;
    const org = team % shape.orgs;
    const m = MODELS[Math.floor(r() * MODELS.length)] ?? MODELS[0];
    const prompt = 1 + Math.floor(r() * 4_000);
    const completion = Math.floor(r() * 1_000);
    const cacheRead = r() < 0.2 ? Math.floor(prompt / 2) : 0;
    const success = r() >= shape.failureRate;
    const tags: string[] = [];
    if (r() < 0.7) tags.push(`env:${r() < 0.8 ? "prod" : "dev"}`);
    if (r() < 0.5) tags.push(`feature:${Math.floor(r() * Math.max(1, shape.tags - 2))}`);
    const event: SpendEvent = {
      spend: success ? prompt * m.inUsd + completion * m.outUsd : prompt * m.inUsd,
      apiKey: `sk-hash-${k}`,
      userId: `user-${user}`,
      teamId: `team-${team}`,
      organizationId: `org-${org}`,
      tags,
      model: m.model,
      modelGroup: m.group,
      provider: m.provider,
      endpoint: "/v1/chat/completions",
      promptTokens: prompt,
      completionTokens: success ? completion : 0,
      cacheReadInputTokens: cacheRead,
      success,
      startTime: now(),
    };
    if (r() < 0.6) event.endUserId = `end-user-${skewed(r, shape.endUsers)}`;
    return event;
  };
}

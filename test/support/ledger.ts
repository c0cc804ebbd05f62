import { usdNumberToPico, usdStringToPico } from "../../src/contract/money.js";
import type { SpendEvent } from "../../src/produce/spend-event.js";

/**
 * The expected totals, computed the plain way: event by event, in bigints,
 * with no aggregator, queue or merge involved. Tests compare PostgreSQL
 * against this, exactly.
 */
export type Totals = Map<string, bigint[]>;

const SEP = "|";

function spendOf(e: SpendEvent): bigint {
  return typeof e.spend === "string" ? usdStringToPico(e.spend) : BigInt(usdNumberToPico(e.spend));
}

function add(t: Totals, key: string, values: readonly bigint[]): void {
  const cur = t.get(key);
  if (cur === undefined) t.set(key, [...values]);
  else for (let i = 0; i < values.length; i++) cur[i] = (cur[i] ?? 0n) + (values[i] ?? 0n);
}

export class Ledger {
  readonly totals: Totals = new Map();
  events = 0;

  /** `nowMs`: the day of an event without a startTime (what the producer was told is now). */
  record(e: SpendEvent, nowMs = Date.now()): void {
    this.events++;
    const spend = spendOf(e);
    const t = this.totals;
    const ent = (kind: string, id: string | null | undefined, id2 = ""): void => {
      if (id != null && id !== "") add(t, ["entity", kind, id, id2].join(SEP), [spend]);
    };
    ent("key", e.apiKey);
    ent("user", e.userId);
    ent("team", e.teamId);
    if (e.userId && e.teamId) ent("team_member", e.userId, e.teamId);
    ent("org", e.organizationId);
    ent("end_user", e.endUserId);
    const tags = [...new Set(e.tags ?? [])];
    for (const tag of tags) ent("tag", tag);

    const ms =
      e.startTime instanceof Date
        ? e.startTime.getTime()
        : typeof e.startTime === "string"
          ? Date.parse(e.startTime)
          : (e.startTime ?? nowMs);
    const date = new Date(ms).toISOString().slice(0, 10);
    const ok = e.success !== false;
    const values = [
      BigInt(e.promptTokens ?? 0),
      BigInt(e.completionTokens ?? 0),
      BigInt(e.cacheReadInputTokens ?? 0),
      BigInt(e.cacheCreationInputTokens ?? 0),
      1n,
      ok ? 1n : 0n,
      ok ? 0n : 1n,
      spend,
    ];
    const dims = [
      date,
      e.apiKey ?? "",
      e.model ?? "",
      e.modelGroup ?? "",
      e.provider ?? "",
      e.mcpToolName ?? "",
      e.endpoint ?? "",
    ];
    const day = (kind: string, id: string | null | undefined): void => {
      if (id != null && id !== "") add(t, ["daily", kind, id, ...dims].join(SEP), values);
    };
    day("user", e.userId);
    day("team", e.teamId);
    day("org", e.organizationId);
    day("end_user", e.endUserId);
    for (const tag of tags) day("tag", tag);
  }

  /** JSON-safe form, for a child process to report what it recorded. */
  toJSON(): { events: number; totals: [string, string[]][] } {
    return { events: this.events, totals: [...this.totals].map(([k, v]) => [k, v.map(String)]) };
  }

  merge(json: { events: number; totals: [string, string[]][] }): void {
    this.events += json.events;
    for (const [k, v] of json.totals)
      add(
        this.totals,
        k,
        v.map((x) => BigInt(x)),
      );
  }
}

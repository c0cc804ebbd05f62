import pg from "pg";
import { decimalToPico } from "../../src/contract/money.js";
import { DAILY_TABLES, ENTITY_TABLES } from "../../src/persist/tables.js";
import type { Totals } from "./ledger.js";

/** Reads every spend row back from PostgreSQL into the Ledger's shape. */
export async function readTotals(databaseUrl: string): Promise<Totals> {
  const client = new pg.Client({ connectionString: databaseUrl });
  await client.connect();
  try {
    const totals: Totals = new Map();
    for (const [kind, { table, keyColumns }] of Object.entries(ENTITY_TABLES)) {
      const id2 = keyColumns[1] ?? "''";
      const res = await client.query<{ id: string; id2: string; spend: string }>(
        `SELECT ${keyColumns[0] ?? ""} AS id, ${id2} AS id2, spend::text AS spend FROM "${table}"`,
      );
      for (const r of res.rows) {
        totals.set(["entity", kind, r.id, r.id2].join("|"), [decimalToPico(r.spend)]);
      }
    }
    for (const [kind, { table, entityColumn }] of Object.entries(DAILY_TABLES)) {
      const res = await client.query<Record<string, string>>(
        `SELECT ${entityColumn} AS id, date, api_key, model, model_group, custom_llm_provider, mcp_namespaced_tool_name, endpoint,
                prompt_tokens::text, completion_tokens::text, cache_read_input_tokens::text, cache_creation_input_tokens::text,
                api_requests::text, successful_requests::text, failed_requests::text, spend::text
           FROM "${table}"`,
      );
      for (const r of res.rows) {
        const key = [
          "daily",
          kind,
          r.id,
          r.date,
          r.api_key,
          r.model,
          r.model_group,
          r.custom_llm_provider,
          r.mcp_namespaced_tool_name,
          r.endpoint,
        ].join("|");
        totals.set(key, [
          BigInt(r.prompt_tokens ?? "0"),
          BigInt(r.completion_tokens ?? "0"),
          BigInt(r.cache_read_input_tokens ?? "0"),
          BigInt(r.cache_creation_input_tokens ?? "0"),
          BigInt(r.api_requests ?? "0"),
          BigInt(r.successful_requests ?? "0"),
          BigInt(r.failed_requests ?? "0"),
          decimalToPico(r.spend ?? "0"),
        ]);
      }
    }
    return totals;
  } finally {
    await client.end();
  }
}

/** Differences between two totals, for a readable assertion message (empty when equal). */
export function diffTotals(expected: Totals, actual: Totals, max = 10): string[] {
  const out: string[] = [];
  for (const [k, v] of expected) {
    const a = actual.get(k);
    if (a === undefined || a.join(",") !== v.join(","))
      out.push(`${k}: expected ${v.join(",")} got ${a?.join(",") ?? "nothing"}`);
    if (out.length >= max) return out;
  }
  for (const k of actual.keys()) {
    if (!expected.has(k)) out.push(`${k}: unexpected row ${actual.get(k)?.join(",") ?? ""}`);
    if (out.length >= max) return out;
  }
  return out;
}

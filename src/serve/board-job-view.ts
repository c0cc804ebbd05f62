import { picoDigitsToDecimal } from "../contract/money.js";
import { decodeDailyRows, decodeEntityRows, RowTextError } from "../contract/row-text.js";
import type { DailyRow, EntityRow } from "../contract/spend-rows.js";

/** Rows of one job the board shows; the rest are counted, not listed. */
export const BOARD_ROWS_SHOWN = 50;

/**
 * A spend job's data as Bull Board shows it. Format 3 carries a job's rows as
 * one length-prefixed text (docs/internals.md, "The job wire format"), which
 * an operator cannot read; the board shows its first rows decoded, one object
 * a row with spend in USD, and how many there are. Anything else (formats 1
 * and 2, the flush scheduler's jobs) is shown as it is. A text that does not
 * decode is shown raw with the reason: the board must still open on a job
 * the flush will set aside.
 */
export function boardJobData(data: unknown): unknown {
  if (typeof data !== "object" || data === null) return data;
  const job = data as Record<string, unknown>;
  const { rowText, kind } = job;
  if (job.v !== 3 || typeof rowText !== "string" || (kind !== "entity" && kind !== "daily"))
    return data;
  const { rowText: _text, ...header } = job;
  try {
    const rows =
      kind === "entity"
        ? decodeEntityRows(rowText).slice(0, BOARD_ROWS_SHOWN).map(entityView)
        : decodeDailyRows(rowText).slice(0, BOARD_ROWS_SHOWN).map(dailyView);
    return { ...header, rowsShown: `${rows.length} of ${String(job.rowCount)}`, rows };
  } catch (err) {
    if (!(err instanceof RowTextError)) throw err;
    return { ...job, rowTextError: err.message };
  }
}

function entityView(r: EntityRow): Record<string, string> {
  return {
    kind: r[0],
    id: r[1],
    ...(r[2] !== "" ? { id2: r[2] } : {}),
    spend_usd: picoDigitsToDecimal(r[3]),
  };
}

function dailyView(r: DailyRow): Record<string, string | number> {
  return {
    kind: r[0],
    entity_id: r[1],
    date: r[2],
    api_key: r[3],
    model: r[4],
    model_group: r[5],
    custom_llm_provider: r[6],
    mcp_namespaced_tool_name: r[7],
    endpoint: r[8],
    prompt_tokens: r[9],
    completion_tokens: r[10],
    cache_read_input_tokens: r[11],
    cache_creation_input_tokens: r[12],
    api_requests: r[13],
    successful_requests: r[14],
    failed_requests: r[15],
    spend_usd: picoDigitsToDecimal(r[16]),
  };
}

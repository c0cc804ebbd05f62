import { picoDigitsToDecimal } from "../contract/money.js";
import { decodeDailyFacts, decodeDailyRows, decodeEntityRows } from "../contract/row-text.js";
import type { Count, DailyRow, EntityRow } from "../contract/spend-rows.js";
import { DAILY_COUNTER_COLUMNS, DAILY_DIMENSION_COLUMNS } from "../persist/tables.js";

/** Rows of one job the board shows; the rest are counted, not listed. */
export const BOARD_ROWS_SHOWN = 50;

/**
 * A spend job's data as Bull Board shows it. Formats 3 and 4 carry a job's
 * rows (or daily facts) as one length-prefixed text (docs/internals.md, "The
 * job wire format"), which an operator cannot read; the board shows its first
 * rows decoded (format 4's facts fanned out to the daily rows they add to),
 * one object a row with spend in USD, and how many there are. Anything else (formats 1
 * and 2, the flush scheduler's jobs) is shown as it is. A text that does not
 * decode is shown raw with the reason: the board must still open on a job
 * the flush will set aside.
 */
export function boardJobData(data: unknown): unknown {
  if (typeof data !== "object" || data === null) return data;
  const job = data as Record<string, unknown>;
  const { rowText, kind } = job;
  if (
    (job.v !== 3 && job.v !== 4) ||
    typeof rowText !== "string" ||
    (kind !== "entity" && kind !== "daily")
  )
    return data;
  const { rowText: _text, ...header } = job;
  try {
    if (job.v === 4) {
      const all = decodeDailyFacts(rowText).rows;
      const rows = all.slice(0, BOARD_ROWS_SHOWN).map(dailyView);
      // rowCount (in the header) counts the facts the rows were fanned out from.
      return { ...header, rowsShown: `${rows.length} of ${all.length}`, rows };
    }
    const rows =
      kind === "entity"
        ? decodeEntityRows(rowText).slice(0, BOARD_ROWS_SHOWN).map(entityView)
        : decodeDailyRows(rowText).slice(0, BOARD_ROWS_SHOWN).map(dailyView);
    return { ...header, rowsShown: `${rows.length} of ${String(job.rowCount)}`, rows };
  } catch (err) {
    // RowTextError names the position and the reason; anything else still
    // must not turn the board's page into an error.
    return { ...job, rowTextError: err instanceof Error ? err.message : String(err) };
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

/** A daily row under its table's column names (tables.ts), spend in USD. */
function dailyView(r: DailyRow): Record<string, string | number> {
  const view: Record<string, string | number> = { kind: r[0], entity_id: r[1] };
  DAILY_DIMENSION_COLUMNS.forEach((column, i) => (view[column] = r[2 + i] as string));
  DAILY_COUNTER_COLUMNS.forEach((column, i) => (view[column] = r[9 + i] as Count));
  view.spend_usd = picoDigitsToDecimal(r[16]);
  return view;
}

import { RowTextWriter } from "../../src/contract/row-text.js";
import { sameDailyContext, type DailyRow, type EntityRow } from "../../src/contract/spend-batch.js";

/**
 * A user's spend rows as a producer seals them: the user's entity row and
 * one daily row (a fixed date, key, model, provider and endpoint), each
 * carrying `pico` picodollars.
 */
export function userEntityRow(user: string, pico: string): EntityRow {
  return ["user", user, "", pico];
}

export function userDailyRow(user: string, pico: string): DailyRow {
  return [
    "user",
    user,
    "2026-12-03",
    "key-1",
    "gpt-4o",
    "gpt-4o",
    "openai",
    "",
    "/v1/chat/completions",
    100,
    20,
    0,
    0,
    1,
    1,
    0,
    pico,
  ];
}

/**
 * Daily rows as fact text (job format 4): each row a fact naming only its own
 * entity, so the text fans out to exactly these rows.
 */
export function encodeDailyRowsAsFacts(rows: readonly DailyRow[]): string {
  const w = new RowTextWriter();
  let last: DailyRow | undefined;
  for (const r of rows) {
    if (last === undefined || !sameDailyContext(last, r))
      w.context(r[2], r[3], r[4], r[5], r[6], r[7], r[8]);
    const id = r[1];
    const k = r[0];
    w.fact(
      k === "tag" ? [id] : [],
      k === "user" ? id : "",
      k === "team" ? id : "",
      k === "org" ? id : "",
      k === "end_user" ? id : "",
      r[9],
      r[10],
      r[11],
      r[12],
      r[13],
      r[14],
      r[16],
    );
    last = r;
  }
  return w.take();
}

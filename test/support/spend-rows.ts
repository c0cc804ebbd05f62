import type { DailyRow, EntityRow } from "../../src/contract/spend-batch.js";

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

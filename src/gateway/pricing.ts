import type { ModelPrice } from "../config/config.js";
import { picoToDecimal } from "../contract/money.js";

/** A request's cost, exactly: integer picodollars, and the decimal string the producer takes. */
export interface Cost {
  pico: bigint;
  usd: string;
}

/** Prices a request's tokens; never a float on the way. */
export function costOf(price: ModelPrice, promptTokens: number, completionTokens: number): Cost {
  const pico =
    BigInt(promptTokens) * price.inputPicoPerToken +
    BigInt(completionTokens) * price.outputPicoPerToken;
  return { pico, usd: picoToDecimal(pico) };
}

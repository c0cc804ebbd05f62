import type { ModelPrice } from "../config/config.js";
import { picoToDecimal } from "../contract/money.js";

export class UnknownModelError extends Error {
  readonly code = "UNKNOWN_MODEL";
  constructor(
    readonly model: string,
    known: readonly string[],
  ) {
    super(
      `model ${JSON.stringify(model.slice(0, 100))} has no price: add it to spend_buffer_settings.model_prices` +
        (known.length > 0 ? ` (priced models: ${known.slice(0, 20).join(", ")})` : ""),
    );
    this.name = "UnknownModelError";
  }
}

/** A request's cost, exactly: integer picodollars, and the decimal string the producer takes. */
export interface Cost {
  pico: bigint;
  usd: string;
}

/** Prices a request from the configured table; never a float on the way. */
export class PriceTable {
  constructor(private readonly prices: ReadonlyMap<string, ModelPrice>) {}

  has(model: string): boolean {
    return this.prices.has(model);
  }

  /** Throws UnknownModelError for a model with no price. */
  cost(model: string, promptTokens: number, completionTokens: number): Cost {
    const p = this.prices.get(model);
    if (p === undefined) throw new UnknownModelError(model, [...this.prices.keys()]);
    const pico =
      BigInt(promptTokens) * p.inputPicoPerToken + BigInt(completionTokens) * p.outputPicoPerToken;
    return { pico, usd: picoToDecimal(pico) };
  }
}

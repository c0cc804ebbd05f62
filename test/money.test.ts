import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import {
  decimalToPico,
  picoDigitsToDecimal,
  picoToDecimal,
  usdNumberToPico,
  usdStringToPico,
  usdStringToPicoNumber,
} from "../src/money.js";

describe("money", () => {
  it("parses decimal strings exactly", () => {
    assert.equal(usdStringToPico("0.1"), 100_000_000_000n);
    assert.equal(usdStringToPico("1234.000000000001"), 1_234_000_000_000_001n);
    assert.throws(() => usdStringToPico("0.1234567890123"), /at most 12 fractional digits/);
    assert.throws(() => usdStringToPico("-1"), /non-negative/);
  });

  it("the request path's number parser accepts, refuses and values exactly as the bigint one", () => {
    const text = fc.oneof(
      // Well-formed amounts of every size, including past the fast path's range.
      fc
        .tuple(fc.stringMatching(/^\d{1,17}$/), fc.option(fc.stringMatching(/^\d{0,13}$/)))
        .map(([w, f]) => (f === null ? w : `${w}.${f}`)),
      // Anything built from the characters a decimal uses, and a few others.
      fc.string({ unit: fc.constantFrom("0", "1", "9", ".", "-", "e", " ", "+"), maxLength: 20 }),
    );
    fc.assert(
      fc.property(text, (s) => {
        let exact: bigint | Error;
        try {
          exact = usdStringToPico(s);
        } catch (err) {
          exact = err as Error;
        }
        if (exact instanceof Error) {
          assert.throws(() => usdStringToPicoNumber(s), { message: exact.message });
        } else if (exact <= BigInt(Number.MAX_SAFE_INTEGER)) {
          assert.equal(usdStringToPicoNumber(s), Number(exact));
        }
      }),
      { numRuns: 5_000 },
    );
  });

  it("rounds a float cost once, at the 12th decimal, so float noise never accumulates", () => {
    assert.equal(usdNumberToPico(0.1 + 0.2), 300_000_000_000);
    let floatSum = 0;
    let exact = 0n;
    for (let i = 0; i < 10_000; i++) {
      floatSum += 0.1;
      exact += BigInt(usdNumberToPico(0.1));
    }
    assert.notEqual(floatSum, 1000, "floats drift");
    assert.equal(picoToDecimal(exact), "1000.000000000000");
  });

  it("formats and parses NUMERIC text symmetrically", () => {
    for (const v of [
      0n,
      1n,
      999_999_999_999n,
      1_000_000_000_000n,
      123_456_789_012_345_678_901n,
      -5n,
    ]) {
      assert.equal(decimalToPico(picoToDecimal(v)), v);
    }
    assert.equal(picoToDecimal(1n), "0.000000000001");
  });

  it("formats picodollar digits as picoToDecimal formats their value", () => {
    fc.assert(
      fc.property(fc.bigInt({ min: 0n, max: 10n ** 38n - 1n }), fc.nat({ max: 3 }), (v, zeros) => {
        // Jobs carry digits; leading zeros are valid digits and must not change the text.
        const digits = "0".repeat(zeros) + v.toString();
        assert.equal(picoDigitsToDecimal(digits), picoToDecimal(v));
      }),
    );
    assert.equal(picoDigitsToDecimal("1"), "0.000000000001");
    assert.equal(picoDigitsToDecimal("1000000000000"), "1.000000000000");
  });
});

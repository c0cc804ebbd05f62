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
} from "../../src/contract/money.js";

/**
 * The rounding rule, written the slow, obvious way: the decimal String(x)
 * prints, as an integer scaled by a power of ten, rounded half up in BigInt.
 */
function referencePico(x: number): bigint {
  const m = /^(\d+)(?:\.(\d+))?(?:e([+-]\d+))?$/.exec(String(x));
  if (m === null) throw new Error(`unexpected ${String(x)}`);
  const [, whole = "", frac = "", exp = "0"] = m;
  const shift = Number(exp) - frac.length + 12;
  const n = BigInt(whole + frac);
  if (shift >= 0) return n * 10n ** BigInt(shift);
  const d = 10n ** BigInt(-shift);
  return (2n * n + d) / (2n * d);
}

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

  it("rounds a number as the decimal it prints as, half up at the 12th decimal", () => {
    // The same decimal shape, rounded the same way (a binary multiply took them apart).
    assert.equal(usdNumberToPico(8.176985e-7), 817_699);
    assert.equal(usdNumberToPico(4.880395e-7), 488_040);
    assert.equal(usdNumberToPico(0.0000000000005), 1);
    assert.equal(usdNumberToPico(0.0000000000004999), 0);
    assert.equal(usdNumberToPico(12.3456789012345), 12_345_678_901_235);
    assert.equal(usdNumberToPico(3999.9999999999995), 4_000_000_000_000_000);
    assert.equal(usdNumberToPico(0), 0);
    assert.equal(usdNumberToPico(4000), 4_000_000_000_000_000);
    assert.equal(usdNumberToPico(5e-324), 0);
    assert.throws(() => usdNumberToPico(Number.NaN), /not a finite USD amount/);
    assert.throws(() => usdNumberToPico(Infinity), /not a finite USD amount/);

    const decimal = (digits: bigint, decimals: number): number =>
      Number(`${digits.toString()}e-${decimals}`);
    const x = fc.oneof(
      // Any double in range.
      fc.double({ min: 0, max: 4_000, noNaN: true }),
      // d / 10^k with 13 to 17 decimals: parsed from text, and divided as a gateway's float math would.
      fc
        .integer({ min: 13, max: 17 })
        .chain((k) =>
          fc.tuple(fc.bigInt({ min: 0n, max: 4_000n * 10n ** BigInt(k) }), fc.constant(k)),
        )
        .map(([d, k]) => decimal(d, k)),
      fc
        .tuple(
          fc.integer({ min: 0, max: Number.MAX_SAFE_INTEGER }),
          fc.integer({ min: 13, max: 17 }),
        )
        .map(([d, k]) => d / 10 ** k)
        .filter((v) => v <= 4_000),
      // Exact ties: 13 decimals ending in 5.
      fc
        .tuple(fc.bigInt({ min: 0n, max: 4_000n * 10n ** 12n - 1n }))
        .map(([d]) => decimal(d * 10n + 5n, 13)),
      // Exponent forms (String(x) prints e-7 and below).
      fc
        .tuple(fc.integer({ min: 1, max: 99_999_999 }), fc.integer({ min: 7, max: 22 }))
        .map(([m, k]) => decimal(BigInt(m), k)),
      // Near the fast path's edge: where x * 10^12 crosses 2^50.
      fc.double({ min: 2 ** 50 / 1e12 - 1, max: 2 ** 50 / 1e12 + 1, noNaN: true }),
    );
    fc.assert(
      fc.property(x, (v) => {
        assert.equal(BigInt(usdNumberToPico(v)), referencePico(v), `x = ${String(v)}`);
      }),
      { numRuns: 50_000 },
    );
  });

  it("takes an exact picodollar count given as a number of 15 digits or fewer back exactly", () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 10 ** 15 - 1 }), (n) => {
        assert.equal(usdNumberToPico(Number(`${n}e-12`)), n);
      }),
      { numRuns: 20_000 },
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

import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import fc from "fast-check";
import pg from "pg";
import { numericArrayLiteral, textArrayLiteral } from "../../src/persist/pg-array.js";
import { createTestDatabase, type TestDatabase } from "../support/db.js";

/**
 * The flush's array literals are read by PostgreSQL's own parser (array_in):
 * every string must come back exactly as it went in, whether written bare or
 * quoted.
 */

let t: TestDatabase;
let client: pg.Client;

async function roundTrip(values: readonly string[]): Promise<string[]> {
  const r = await client.query<{ a: string[] }>("SELECT $1::text[] AS a", [
    textArrayLiteral(values),
  ]);
  return r.rows[0]?.a ?? [];
}

describe("array literals", () => {
  before(async () => {
    t = await createTestDatabase("pg_array");
    client = new pg.Client({ connectionString: t.url });
    await client.connect();
  });
  after(async () => {
    await client.end();
    await t.drop();
  });

  it("strings array_in would misread bare come back exactly", async () => {
    const hostile = [
      "",
      "NULL",
      "null",
      "NuLl",
      "NULLS",
      " NULL",
      " lead",
      "trail ",
      "in side",
      "tab\there",
      "line\nbreak",
      "cr\rvt\vff\f",
      "a,b",
      "{a}",
      "}",
      "{",
      '"quoted"',
      "back\\slash",
      '\\"',
      "[1:2]={x}",
      "é ünïcödé 😀",
      "\u00a0nbsp",
      "gpt-4o",
      "/v1/chat/completions",
    ];
    assert.deepEqual(await roundTrip(hostile), hostile);
    for (const v of hostile) assert.deepEqual(await roundTrip([v]), [v], JSON.stringify(v));
  });

  it("one hostile element among bare ones is caught wherever it sits in the column", async () => {
    // The column is checked as one joined text: a comma, an empty element or
    // NULL at its first, a middle or its last place must still be quoted.
    const hostile = ["", "NULL", "null", "a,b", ",", ",,", "x,", ",x", " ", "{", '"', "\\"];
    for (const v of hostile)
      for (const values of [
        [v, "a", "b"],
        ["a", v, "b"],
        ["a", "b", v],
      ])
        assert.deepEqual(await roundTrip(values), values, JSON.stringify(values));
    assert.deepEqual(await roundTrip(["nullx", "xnull", "a"]), ["nullx", "xnull", "a"]);
    assert.equal(textArrayLiteral(["nullx", "xnull", "a"]), "{nullx,xnull,a}");
  });

  it("usual ids are written bare", () => {
    assert.equal(textArrayLiteral(["user-1", "gpt-4o", "/v1/chat"]), "{user-1,gpt-4o,/v1/chat}");
    assert.equal(textArrayLiteral(["a", "", "NULL"]), '{a,"","NULL"}');
    assert.equal(textArrayLiteral([]), "{}");
  });

  it("any well-formed string without NUL comes back exactly (fast-check)", async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(
          fc.oneof(
            fc.string({ unit: "grapheme" }),
            fc.string({
              unit: fc.constantFrom("{", "}", ",", '"', "\\", " ", "\t", "N", "U", "L", "a"),
            }),
          ),
          { maxLength: 20 },
        ),
        async (raw) => {
          const values = raw.map((v) => v.replaceAll("\0", ""));
          assert.deepEqual(await roundTrip(values), values);
        },
      ),
      { numRuns: 300 },
    );
  });

  it("numbers and digit strings are read as numbers", async () => {
    const r = await client.query<{ a: string[] }>("SELECT $1::numeric[]::text[] AS a", [
      numericArrayLiteral([1, "12345678901234567890123", 0]),
    ]);
    assert.deepEqual(r.rows[0]?.a, ["1", "12345678901234567890123", "0"]);
  });
});

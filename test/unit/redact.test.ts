import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import { redact as redactFromConfig } from "../../src/config/config.js";
import { redact } from "../../src/config/redact.js";
import { redactLogLine } from "../../src/observe/logger.js";

/** The characters that end or confuse a URL's or a DSN's parts, drawn often. */
const TRICKY = ["/", "@", ":", "?", "#", "%", "=", "'", '"', " ", "\\", "&", ";", "*"];
const chars = (s: string): string[] => Array.from(s);
const printable = fc.integer({ min: 0x20, max: 0x7e }).map((c) => String.fromCharCode(c));
const passwordArb = fc.string({
  unit: fc.oneof(fc.constantFrom(...TRICKY), printable),
  minLength: 1,
  maxLength: 24,
});
const userArb = fc.string({
  unit: fc.constantFrom(
    ...chars("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-"),
  ),
  minLength: 1,
  maxLength: 12,
});
const hostArb = fc.oneof(fc.domain(), fc.ipV4(), fc.constant("localhost"));
const dbArb = fc.string({
  unit: fc.constantFrom(...chars("abcdefghijklmnopqrstuvwxyz_")),
  minLength: 1,
});

type Form = "url-raw" | "url-encoded" | "url-query" | "url-sslpassword" | "dsn";
const formArb = fc.constantFrom<Form>(
  "url-raw",
  "url-encoded",
  "url-query",
  "url-sslpassword",
  "dsn",
);

/** libpq's quoting: single quotes, with `\` escaping `'` and `\`. */
function dsnQuote(v: string): string {
  return `'${v.replace(/[\\']/g, (c) => `\\${c}`)}'`;
}

interface Credential {
  form: Form;
  scheme: string;
  user: string;
  host: string;
  port: number | null;
  db: string;
  prefix: string;
  suffix: string;
  /** The order of a DSN's pairs, by first letter: the host may come after the password. */
  order: string;
}

/** The connection string with `password` written as an operator would, in a line of text. */
function render(c: Credential, password: string): string {
  const port = c.port === null ? "" : `:${c.port}`;
  let conn: string;
  switch (c.form) {
    case "url-raw":
      conn = `${c.scheme}://${c.user}:${password}@${c.host}${port}/${c.db}`;
      break;
    case "url-encoded":
      conn = `${c.scheme}://${encodeURIComponent(c.user)}:${encodeURIComponent(password)}@${c.host}${port}/${c.db}`;
      break;
    case "url-query":
      conn = `${c.scheme}://${c.host}${port}/${c.db}?user=${c.user}&password=${encodeURIComponent(password)}`;
      break;
    case "url-sslpassword":
      conn = `${c.scheme}://${c.user}@${c.host}${port}/${c.db}?sslmode=require&sslpassword=${encodeURIComponent(password)}`;
      break;
    case "dsn":
      conn = [
        `host=${c.host}${c.port === null ? "" : ` port=${c.port}`}`,
        `user=${c.user}`,
        `password=${dsnQuote(password)}`,
        `dbname=${c.db}`,
      ]
        .sort((a, b) => c.order.indexOf(a[0] ?? "") - c.order.indexOf(b[0] ?? ""))
        .join(" ");
      break;
  }
  return `${c.prefix}${conn}${c.suffix}`;
}

const credentialArb: fc.Arbitrary<Credential> = fc.record({
  form: formArb,
  scheme: fc.constantFrom("postgresql", "postgres", "redis", "rediss"),
  user: userArb,
  host: hostArb,
  port: fc.option(fc.integer({ min: 1, max: 65_535 })),
  db: dbArb,
  prefix: fc.constantFrom("", "PostgreSQL at ", "error: Redis at ", '{"url":"'),
  suffix: fc.constantFrom(
    "",
    " is unreachable: connect ECONNREFUSED 10.0.0.7:6379",
    " has no schema: run `haimaker-spend migrate` first",
    '","level":30}',
  ),
  order: fc.constantFrom("hupd", "puhd", "dpuh", "updh"),
});

/** Stands in for the password: distinctive, so finding it in the output is a leak. */
const PLACEHOLDER = "PLACEHOLDERsecret";

describe("redact", () => {
  it("hides the password in each form the review found leaking", () => {
    const cases: [input: string, secret: string, expected: string][] = [
      ["redis://:p/ss@cache:6379", "p/ss", "redis://***@cache:6379"],
      ["redis://user:p@ss@cache:6379/2", "p@ss", "redis://***@cache:6379/2"],
      ["postgresql://u:p%2Fss%40x@db:5432/spend", "p%2Fss%40x", "postgresql://***@db:5432/spend"],
      ["postgresql://u:pa ss#?x@db/spend", "pa ss#?x", "postgresql://***@db/spend"],
      ["host=db password=secret user=x", "secret", "host=db password=*** user=x"],
      ["host=db password='a b' user=x", "a b", "host=db password=*** user=x"],
      ["host=db password = 'it\\'s' user=x", "it\\'s", "host=db password = *** user=x"],
      ["host=db password=a\\ b user=x", "a\\ b", "host=db password=*** user=x"],
      [
        "postgresql://db/spend?password=s3cret&sslmode=require",
        "s3cret",
        "postgresql://db/spend?password=***",
      ],
      [
        "postgresql://u@db/spend?sslmode=verify-full&sslpassword=keypw",
        "keypw",
        "postgresql://***@db/spend?sslmode=verify-full&sslpassword=***",
      ],
      [
        'error: PostgreSQL at localhost is unreachable: database "host=db password=secret" does not exist',
        "secret",
        // The unquoted value runs to the blank: the closing `"` goes with it.
        'error: PostgreSQL at localhost is unreachable: database "host=db password=*** does not exist',
      ],
    ];
    for (const [input, secret, expected] of cases) {
      const out = redact(input);
      assert.equal(out, expected, input);
      assert.ok(!out.includes(secret), input);
    }
  });

  it("leaves text without credentials as it is", () => {
    for (const text of [
      "Redis at 127.0.0.1:6379/0 is unreachable: connect ECONNREFUSED 127.0.0.1:6379",
      "redis://cache:6379/0",
      "postgresql://db:5432/spend?sslmode=require",
      "invalid configuration: spend_buffer_settings.admin_password: Too small",
      "a=b",
    ]) {
      assert.equal(redact(text), text);
    }
  });

  it("is what config.ts exports as redact", () => {
    assert.equal(redactFromConfig, redact);
  });

  it("never throws, whatever the input", () => {
    fc.assert(
      fc.property(fc.string({ unit: "binary", maxLength: 200 }), (s) => {
        assert.equal(typeof redact(s), "string");
      }),
      { numRuns: 2_000 },
    );
    const odd: unknown[] = [undefined, null, 42, {}, Symbol("s")];
    for (const v of odd) assert.equal(typeof redact(v as string), "string");
  });

  it("property: the password never appears and the host stays visible, in URL and DSN forms", () => {
    fc.assert(
      fc.property(credentialArb, passwordArb, (c, password) => {
        const out = redact(render(c, password));
        const baseline = redact(render(c, PLACEHOLDER));
        assert.ok(!baseline.includes(PLACEHOLDER), `placeholder leaked: ${baseline}`);
        // What is left does not depend on the password at all, so nothing of it can leak.
        assert.equal(out, baseline);
        for (const form of [password, encodeURIComponent(password), dsnQuote(password)]) {
          if (!baseline.includes(form)) assert.ok(!out.includes(form), `${form} in ${out}`);
        }
        assert.ok(out.includes(c.host), `host ${c.host} hidden in ${out}`);
      }),
      { numRuns: 3_000 },
    );
  });

  it("redacts every string of a JSON log line on its own, keeping the line valid JSON", () => {
    const line = `${JSON.stringify({
      level: 50,
      err: "connect failed for redis://:p/ss@cache:6379/0",
      dsn: "host=db password='a \"b' user=x",
      msg: "starting",
      note: "mail ops@example.com",
    })}\n`;
    const out = redactLogLine(line);
    assert.ok(out.endsWith("\n"));
    const parsed = JSON.parse(out) as Record<string, unknown>;
    assert.equal(parsed.err, "connect failed for redis://***@cache:6379/0");
    assert.equal(parsed.dsn, "host=db password=*** user=x");
    assert.equal(parsed.note, "mail ops@example.com");
    assert.equal(parsed.msg, "starting");
    fc.assert(
      fc.property(credentialArb, passwordArb, (c, password) => {
        const text = render(c, password);
        const redacted = redactLogLine(`${JSON.stringify({ msg: text, n: 1 })}\n`);
        const back = JSON.parse(redacted) as { msg: string; n: number };
        assert.equal(back.msg, redact(text));
        assert.equal(back.n, 1);
      }),
      { numRuns: 500 },
    );
  });
});

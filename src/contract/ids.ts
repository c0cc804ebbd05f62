/**
 * What an id may hold: exactly the strings PostgreSQL stores as sent and can
 * index. Ids are virtual key hashes, users, teams, organizations, end users,
 * tags and the daily rows' dimensions (model, provider, endpoint, ...). The
 * producer, the ingest API, the gateway and the key routes all apply these
 * rules, so a string that passes one of them is stored byte for byte by the
 * flush, and two ids PostgreSQL would treat as one row are one id here too.
 *
 * Refused, each for a reason PostgreSQL or an operator would otherwise meet
 * later, when it can no longer be refused:
 * - lone UTF-16 surrogates: the driver sends U+FFFD instead, so the stored id
 *   differs from the one sent, and "t\ud800" next to "t\ufffd" are two rows
 *   in a flush but one in PostgreSQL (SQLSTATE 21000, the whole statement fails);
 * - strings not in Unicode Normalization Form C: "é" precomposed and "e" with
 *   a combining accent look the same and would be two entities. Refused rather
 *   than normalised, so an id is stored exactly as its sender wrote it;
 * - control characters (C0, DEL, C1): PostgreSQL cannot store NUL, and the
 *   rest break logs, terminals and CSV exports;
 * - line and paragraph separators (U+2028, U+2029) and bidirectional
 *   embedding, override and isolate controls (U+202A-U+202E, U+2066-U+2069):
 *   invisible, they make one id read as another in logs and dashboards;
 * - the noncharacters U+FFFE and U+FFFF.
 */

/** Longest id, in UTF-16 code units: a bound on memory and logs; the bytes are bounded below. */
export const MAX_ID_LENGTH = 256;

/**
 * Most UTF-8 bytes of a daily row's unique key: its eight text columns
 * (entity id, date, api key, model, model group, provider, MCP tool,
 * endpoint) together. PostgreSQL's B-tree refuses an index tuple over 2,704
 * bytes (SQLSTATE 54000), and compression cannot be counted on (random text
 * does not compress). A tuple is an 8-byte header plus, per column, its bytes,
 * a varlena header of at most 4 bytes and at most 3 bytes of alignment:
 * 2,560 + 8 + 8 x 7 = 2,624 <= 2,704, whatever the text.
 */
export const MAX_DAILY_KEY_BYTES = 2_560;

/** Bytes of a daily row's date column (YYYY-MM-DD). */
export const DATE_BYTES = 10;

/** Why an id cannot be stored: the metric label, and the sentence for the caller. */
export interface IdProblem {
  reason: "invalid_id" | "invalid_unicode";
  detail: string;
}

function hex(c: number): string {
  return `U+${c.toString(16).toUpperCase().padStart(4, "0")}`;
}

/**
 * Why `s` cannot be an id, or undefined when it can. One pass over the code
 * units, and a normalisation check only for text with a character at or above
 * U+0300: below it no character composes or decomposes, so such text is
 * always in NFC.
 */
export function idProblem(s: string): IdProblem | undefined {
  let composable = false;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x20 || c === 0x7f || (c >= 0x80 && c <= 0x9f))
      return { reason: "invalid_id", detail: `contains the control character ${hex(c)} at ${i}` };
    if (c < 0x300) continue;
    composable = true;
    if (c >= 0xd800 && c <= 0xdfff) {
      const next = s.charCodeAt(i + 1);
      if (c <= 0xdbff && next >= 0xdc00 && next <= 0xdfff) {
        i++;
        continue;
      }
      return {
        reason: "invalid_unicode",
        detail: `is not well-formed Unicode: lone surrogate ${hex(c)} at ${i}`,
      };
    }
    if (c === 0x2028 || c === 0x2029)
      return { reason: "invalid_id", detail: `contains the separator ${hex(c)} at ${i}` };
    if ((c >= 0x202a && c <= 0x202e) || (c >= 0x2066 && c <= 0x2069))
      return {
        reason: "invalid_id",
        detail: `contains the bidirectional control ${hex(c)} at ${i}`,
      };
    if (c === 0xfffe || c === 0xffff)
      return { reason: "invalid_unicode", detail: `contains the noncharacter ${hex(c)} at ${i}` };
  }
  if (composable && s.normalize("NFC") !== s)
    return {
      reason: "invalid_unicode",
      detail:
        "is not in Unicode Normalization Form C (normalise it with String.prototype.normalize)",
    };
  return undefined;
}

/** UTF-8 length of a well-formed string (a surrogate pair counts 2 + 2). */
export function utf8Bytes(s: string): number {
  let n = s.length;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c >= 0x80) n += c < 0x800 || (c >= 0xd800 && c <= 0xdfff) ? 1 : 2;
  }
  return n;
}

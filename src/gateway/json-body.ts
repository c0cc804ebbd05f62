import express, { type RequestHandler } from "express";
import { sendError } from "./openai-error.js";

/**
 * Deepest nesting of arrays and objects a JSON body may have. Parsing a
 * deeper body is fine, but the gateway writes bodies out again with
 * JSON.stringify (to the upstream, and hashed for an Idempotency-Key), which
 * recurses: 100,000 levels overflowed the stack there (a 500, and a chat
 * request reported as an unreachable upstream). 128 is far past what
 * OpenAI's requests use, tools' JSON Schemas included.
 */
export const MAX_JSON_DEPTH = 128;

/**
 * Whether `value` nests arrays and objects deeper than `max`: walked with a
 * stack of its own (no recursion), visiting containers only, so a chat body's
 * few dozen nodes cost well under a microsecond and a hostile one stops at
 * the first node past the limit.
 */
export function nestedDeeperThan(value: unknown, max: number): boolean {
  if (typeof value !== "object" || value === null) return false;
  const nodes: object[] = [value];
  const depths: number[] = [1];
  while (nodes.length > 0) {
    const node = nodes.pop() as object;
    const depth = depths.pop() as number;
    if (depth > max) return true;
    const children: unknown[] = Array.isArray(node) ? node : Object.values(node);
    for (const child of children) {
      if (typeof child === "object" && child !== null) {
        nodes.push(child);
        depths.push(depth + 1);
      }
    }
  }
  return false;
}

/**
 * A JSON body of at most `limitBytes`: express.json (its errors go to the
 * app's error handler), then a body nested deeper than MAX_JSON_DEPTH
 * refused, 400 invalid_body. Two handlers, for a route's handler list.
 */
export function jsonBody(limitBytes: number): RequestHandler[] {
  const depth: RequestHandler = (req, res, next) => {
    if (!nestedDeeperThan(req.body, MAX_JSON_DEPTH)) return next();
    sendError(
      res,
      400,
      "invalid_request_error",
      "invalid_body",
      `the body nests arrays and objects deeper than ${MAX_JSON_DEPTH} levels`,
    );
  };
  return [express.json({ limit: limitBytes }), depth];
}

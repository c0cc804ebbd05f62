import { errorText } from "../observe/error-text.js";
import type { RequestHandler } from "express";
import type { RedisClient } from "../redis/connection.js";
import type { Db } from "../persist/prisma.js";

/** One dependency's check: resolves when it answers, rejects otherwise. */
export type Check = () => Promise<unknown>;

export function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} did not answer within ${ms} ms`)), ms);
  });
  p.catch(() => undefined);
  return Promise.race([p, timeout]).finally(() => clearTimeout(timer));
}

export const redisCheck =
  (redis: RedisClient): Check =>
  () =>
    redis.ping();

export const postgresCheck =
  (db: Db): Check =>
  () =>
    db.$queryRaw`SELECT 1`;

/**
 * GET /health/readiness: 200 when every dependency answers within the
 * timeout, else 503 naming the ones that failed. `draining()` true (the
 * process got SIGTERM) answers 503 too, so a load balancer stops sending.
 */
export function readinessHandler(
  checks: Record<string, Check>,
  opts: { timeoutMs?: number; draining?: () => boolean } = {},
): RequestHandler {
  const timeoutMs = opts.timeoutMs ?? 2_000;
  return (_req, res) => {
    void (async () => {
      const names = Object.keys(checks);
      const results = await Promise.allSettled(
        names.map((n) => withTimeout((checks[n] as Check)(), timeoutMs, n)),
      );
      const out: Record<string, string> = {};
      const failed: string[] = [];
      results.forEach((r, i) => {
        const name = names[i] ?? "";
        if (r.status === "fulfilled") out[name] = "ok";
        else {
          failed.push(name);
          out[name] = `error: ${errorText(r.reason)}`;
        }
      });
      const draining = opts.draining?.() ?? false;
      const ok = failed.length === 0 && !draining;
      res.status(ok ? 200 : 503).json({
        status: ok ? "ready" : draining ? "shutting_down" : "unhealthy",
        ...(failed.length > 0 ? { failed } : {}),
        checks: out,
      });
    })();
  };
}

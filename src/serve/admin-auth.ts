import basicAuth from "basic-auth";
import { createHash, timingSafeEqual } from "node:crypto";
import type { Request, RequestHandler } from "express";
import type { AdminConfig } from "../config/config.js";

/**
 * Constant-time comparison of two secrets of any length: both sides are
 * hashed first, so neither the content nor the length leaks through timing.
 */
export function secretEquals(given: string, expected: string): boolean {
  const a = createHash("sha256").update(given).digest();
  const b = createHash("sha256").update(expected).digest();
  return timingSafeEqual(a, b);
}

/** The token of an `Authorization: Bearer <token>` header, if there is one. */
export function bearerToken(req: Request): string | undefined {
  const h = req.headers.authorization;
  if (h === undefined) return undefined;
  const m = /^Bearer\s+(\S+)\s*$/i.exec(h);
  return m?.[1];
}

export interface AdminAuthOptions {
  /** Accepted as a bearer token too (the gateway's general_settings.master_key). */
  masterKey?: string;
  realm?: string;
}

/**
 * Guards admin pages (Bull Board): HTTP basic auth with
 * admin_username/admin_password (parsed by the `basic-auth` package), or a
 * bearer token (admin_token or the master key). With admin_auth: false it
 * lets everything through; with auth on and no credentials configured it lets
 * nothing through.
 */
export function adminAuth(cfg: AdminConfig, opts: AdminAuthOptions = {}): RequestHandler {
  if (!cfg.auth) return (_req, _res, next) => next();
  const tokens = [cfg.token, opts.masterKey].filter((t): t is string => t !== undefined);
  const realm = opts.realm ?? "spend-buffer admin";
  const configured = tokens.length > 0 || cfg.username !== undefined;
  return (req, res, next) => {
    const bearer = bearerToken(req);
    if (bearer !== undefined) {
      // Every configured token is compared, so timing does not tell which matched.
      let ok = false;
      for (const t of tokens) ok = secretEquals(bearer, t) || ok;
      if (ok) return next();
    } else if (cfg.username !== undefined && cfg.password !== undefined) {
      const creds = basicAuth(req);
      if (creds !== undefined) {
        const userOk = secretEquals(creds.name, cfg.username);
        const passOk = secretEquals(creds.pass, cfg.password);
        if (userOk && passOk) return next();
      }
    }
    if (cfg.username !== undefined) res.set("WWW-Authenticate", `Basic realm="${realm}"`);
    res.status(401).json({
      error: configured
        ? "authentication required"
        : "admin pages are locked: no credentials configured (set spend_buffer_settings.admin_username/admin_password or admin_token, or admin_auth: false)",
    });
  };
}

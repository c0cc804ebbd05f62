import { pino, type Logger } from "pino";

export type { Logger };

/**
 * Fields that may carry credentials, wherever they appear (up to three
 * levels deep: `{ config: { redis: { password } } }`). Every logger made by
 * createLogger redacts them, so a careless call site cannot leak one.
 */
export const LOG_REDACT_PATHS = [
  "password",
  "*.password",
  "*.*.password",
  "databaseUrl",
  "*.databaseUrl",
  "*.*.databaseUrl",
  "authorization",
  "*.authorization",
  "*.*.authorization",
  "cookie",
  "*.cookie",
  "*.*.cookie",
  "masterKey",
  "*.masterKey",
  "*.*.masterKey",
];

/**
 * Structured JSON logs (pino): one object per line with `level`, `time`,
 * `name` and the call's fields. Anything that might carry a credential is
 * redacted at the logger. LOG_LEVEL sets the level (default `info`).
 */
export function createLogger(
  name: string,
  level: string = process.env.LOG_LEVEL ?? "info",
): Logger {
  return pino({
    name,
    level,
    redact: { paths: LOG_REDACT_PATHS, censor: "***" },
  });
}

/** A logger that drops everything, for library users who pass none. */
export const silentLogger: Logger = pino({ level: "silent" });

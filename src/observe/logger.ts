import { pino, type Logger } from "pino";
import { ConfigError, LOG_LEVELS, isLogLevel, redact } from "../config/config.js";

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

/** A JSON string literal, escapes included (the alternatives cannot overlap: linear). */
const JSON_STRING = /"(?:[^"\\]|\\.)*"/g;

/**
 * Runs every string of a serialized log line through redact(): a URL or
 * connection string in a message or an error's text loses its credentials
 * whatever field it sits in. Each string is redacted on its own, decoded, so
 * a mask never spans two fields and JSON escapes cannot hide a secret's end.
 */
export function redactLogLine(line: string): string {
  if (!line.includes("@") && !line.includes("=")) return line;
  return line.replace(JSON_STRING, (literal) => {
    if (!literal.includes("@") && !literal.includes("=")) return literal;
    try {
      const value = JSON.parse(literal) as string;
      const hidden = redact(value);
      return hidden === value ? literal : JSON.stringify(hidden);
    } catch {
      return redact(literal);
    }
  });
}

/**
 * Structured JSON logs (pino): one object per line with `level`, `time`,
 * `name` and the call's fields. Anything that might carry a credential is
 * redacted at the logger: the fields named above by path, and credentials in
 * any string by redactLogLine. The level is `level`, else LOG_LEVEL, else
 * `info`; one pino does not know is a ConfigError (one line for the CLI),
 * never pino's own throw with its stack.
 */
export function createLogger(name: string, level?: string): Logger {
  const chosen = level ?? (process.env.LOG_LEVEL || "info");
  if (!isLogLevel(chosen))
    throw new ConfigError(
      `${level === undefined ? "LOG_LEVEL" : "log level"} must be one of ${LOG_LEVELS.join(", ")}, got ${JSON.stringify(chosen)}`,
    );
  return pino({
    name,
    level: chosen,
    redact: { paths: LOG_REDACT_PATHS, censor: "***" },
    hooks: { streamWrite: redactLogLine },
  });
}

/** A logger that drops everything, for library users who pass none. */
export const silentLogger: Logger = pino({ level: "silent" });

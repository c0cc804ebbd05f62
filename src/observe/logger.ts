import { pino, type Logger } from "pino";

export type { Logger };

/** Fields that may carry credentials, wherever they appear (two levels deep). */
export const LOG_REDACT_PATHS = [
  "password",
  "*.password",
  "*.*.password",
  "databaseUrl",
  "*.databaseUrl",
  "authorization",
  "*.authorization",
  "masterKey",
  "*.masterKey",
];

/**
 * Structured JSON logs. Anything that might carry a credential is redacted at
 * the logger, so a careless call site cannot leak it.
 */
export function createLogger(
  name: string,
  level: string = process.env.LOG_LEVEL ?? "info",
): Logger {
  return pino({
    name,
    level,
    redact: {
      paths: [
        "password",
        "*.password",
        "databaseUrl",
        "*.databaseUrl",
        "authorization",
        "*.authorization",
      ],
      censor: "***",
    },
  });
}

/** A logger that drops everything, for library users who pass none. */
export const silentLogger: Logger = pino({ level: "silent" });

/**
 * haimaker-spend-buffer: exact spend accounting for LLM gateways.
 *
 * Embed a producer in a gateway (`createSpendProducer`), run flush workers
 * beside it (`startFlushWorker`), apply the database migrations (`migrate`).
 * Everything else a user touches is here too; nothing under the package's
 * own paths is part of its interface.
 */
export {
  buildConfig,
  ConfigError,
  DEFAULT_CONFIG,
  loadConfig,
  type AppConfig,
  type RedisConfig,
  type ValidationLimits,
} from "./config/config.js";
export { StartupError } from "./config/startup-error.js";
export { redact } from "./config/redact.js";

export { createSpendProducer, type SpendProducerDeps } from "./wiring/create-producer.js";
export {
  startFlushWorker,
  type FlushWorkerOptions,
  type FlushWorkerService,
} from "./wiring/start-flush-worker.js";

export {
  BatchRefusedError,
  BufferFullError,
  CloseTimeoutError,
  ProducerClosedError,
  SpendProducer,
  type ProducerOptions,
} from "./produce/producer.js";
export {
  REJECT_REASONS,
  SpendEventError,
  validateSpendEvent,
  type NormalizedEvent,
  type RejectReason,
  type SpendEvent,
} from "./produce/spend-event.js";
export { idProblem, MAX_DAILY_KEY_BYTES, type IdProblem } from "./contract/ids.js";
export {
  decimalToPico,
  picoToDecimal,
  usdNumberToPico,
  usdStringToPico,
} from "./contract/money.js";
export type { EntityKind, DailyKind } from "./contract/spend-batch.js";

export { PartitionMismatchError } from "./queue/partitions.js";
export type { FlushReport, FlushOutcome } from "./flush/flusher.js";

export { migrate, MigrationError, type MigrateOptions } from "./persist/migrate.js";
export {
  listDeadLetters,
  replayDeadLetter,
  type ReplayOutcome,
  type StoredDeadLetter,
} from "./persist/dead-letters.js";

export { SpendMetrics } from "./observe/metrics.js";
export { createLogger, silentLogger, type Logger } from "./observe/logger.js";

export type { GatewayOptions, GatewayService } from "./gateway/gateway.js";
export { liveSpend, type LiveSpend } from "./gateway/live-spend.js";

/**
 * The reference gateway (OpenAI-compatible chat completions on a mock model,
 * batch ingest, key management), as `haimaker-spend gateway` runs it. Loaded
 * on first use: an embedding process that only records spend never loads
 * express and the gateway's routes.
 */
export async function startGateway(
  ...args: Parameters<typeof import("./gateway/gateway.js").startGateway>
): Promise<import("./gateway/gateway.js").GatewayService> {
  const { startGateway: start } = await import("./gateway/gateway.js");
  return start(...args);
}

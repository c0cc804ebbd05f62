/**
 * The flush worker deployment's entry point (also `haimaker-spend worker`).
 * Config: --config path or SPEND_CONFIG (YAML), REDIS_URL, DATABASE_URL; see
 * README. Serves /metrics, /health/liveliness, /health/readiness and Bull
 * Board (/admin/queues) on METRICS_PORT or spend_buffer_settings.metrics_port.
 */
import { loadConfig } from "../src/config/config.js";
import { createLogger } from "../src/observe/logger.js";
import { startWorkerService } from "../src/serve/worker-service.js";

const log = createLogger("flush-worker");

async function main(): Promise<void> {
  const argIdx = process.argv.indexOf("--config");
  const configPath = argIdx >= 0 ? process.argv[argIdx + 1] : process.env.SPEND_CONFIG;
  const config = loadConfig(configPath || undefined);
  const service = await startWorkerService(config, { logger: log });
  log.info(
    { port: service.port, prefix: config.keyPrefix, everyMs: config.worker.flushEveryMs },
    "flush worker running",
  );

  let stopping = false;
  const stop = async (signal: string): Promise<void> => {
    if (stopping) return;
    stopping = true;
    log.info({ signal }, "stopping: letting the current flush finish");
    await service.close();
    process.exit(0);
  };
  process.on("SIGTERM", () => void stop("SIGTERM"));
  process.on("SIGINT", () => void stop("SIGINT"));
  // Started by a parent over IPC (the demo): if the parent dies, stop rather
  // than flush on under its prefix unwatched. A standalone worker has no channel.
  process.on("disconnect", () => void stop("parent exited"));
}

main().catch((err: unknown) => {
  log.fatal({ err: (err as Error).message }, "flush worker failed to start");
  process.exit(1);
});

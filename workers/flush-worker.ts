/**
 * The flush worker deployment's entry point. Config: --config path or
 * SPEND_CONFIG (YAML), REDIS_URL, DATABASE_URL; see README.
 */
import { loadConfig } from "../src/config/config.js";
import { FlushWorker } from "../src/flush/flush-worker.js";
import { createLogger } from "../src/observe/logger.js";
import { SpendMetrics } from "../src/observe/metrics.js";
import { createDb } from "../src/persist/prisma.js";
import { createApp, listen } from "../src/serve/http.js";

const log = createLogger("flush-worker");

async function main(): Promise<void> {
  const argIdx = process.argv.indexOf("--config");
  const configPath = argIdx >= 0 ? process.argv[argIdx + 1] : process.env.SPEND_CONFIG;
  const config = loadConfig(configPath);
  const metrics = new SpendMetrics();
  const db = createDb(config.databaseUrl);
  const worker = await FlushWorker.start({ config, db, metrics, logger: log });
  const port = Number(process.env.METRICS_PORT ?? config.metricsPort);
  const server = await listen(createApp(metrics), port);
  log.info(
    { port, prefix: config.keyPrefix, everyMs: config.worker.flushEveryMs },
    "flush worker running",
  );

  let stopping = false;
  const stop = async (signal: string): Promise<void> => {
    if (stopping) return;
    stopping = true;
    log.info({ signal }, "stopping: letting the current flush finish");
    server.close();
    await worker.close();
    await db.$disconnect();
    process.exit(0);
  };
  process.on("SIGTERM", () => void stop("SIGTERM"));
  process.on("SIGINT", () => void stop("SIGINT"));
}

main().catch((err: unknown) => {
  log.fatal({ err: (err as Error).message }, "flush worker failed to start");
  process.exit(1);
});

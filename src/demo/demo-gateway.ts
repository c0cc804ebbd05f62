/**
 * A stand-in gateway process for the main job (`npm start`): records
 * synthetic traffic at RATE events/s through a real producer, serves
 * /metrics on METRICS_PORT, and on SIGTERM stops traffic and drains its
 * buffer before exiting. Reports what it recorded to its parent over IPC so
 * the parent can reconcile PostgreSQL against it.
 */
import { loadConfig, reportIgnoredKeys } from "../config/config.js";
import { createLogger } from "../observe/logger.js";
import { SpendMetrics } from "../observe/metrics.js";
import { usdNumberToPico, usdStringToPico } from "../contract/money.js";
import { createApp, listen } from "../serve/http.js";
import { createSpendProducer } from "../wiring/create-producer.js";
import { trafficGenerator } from "./traffic.js";

export interface GatewayReport {
  type: "recorded";
  gateway: number;
  events: number;
  spendPico: string;
  final: boolean;
}

const env = process.env;
const index = Number(env.GATEWAY_INDEX ?? "0");
const rate = Number(env.RATE ?? "200");
const log = createLogger(`gateway-${index}`);
const config = loadConfig(env.SPEND_CONFIG || undefined);
reportIgnoredKeys(config.ignoredLiteLLMKeys, (w) => log.warn(w));
const metrics = new SpendMetrics();

const producer = await createSpendProducer(config, { metrics, logger: log });
const server = await listen(
  createApp(metrics),
  Number(env.METRICS_PORT ?? "0"),
  env.METRICS_HOST ?? "127.0.0.1",
);

const gen = trafficGenerator(Number(env.SEED ?? String(index + 1)));
let events = 0;
let spendPico = 0n;
const report = (final: boolean): Promise<void> => {
  const msg: GatewayReport = {
    type: "recorded",
    gateway: index,
    events,
    spendPico: spendPico.toString(),
    final,
  };
  // Resolved once the message is handed to the channel: exiting before that loses it.
  return new Promise((resolve) => {
    if (process.send === undefined) resolve();
    else process.send(msg, () => resolve());
  });
};

// Traffic in 100 ms ticks; a request's recording failure never stops the gateway.
const tick = setInterval(() => {
  for (let i = 0; i < rate / 10; i++) {
    const e = gen();
    try {
      producer.record(e);
      events++;
      spendPico +=
        typeof e.spend === "string" ? usdStringToPico(e.spend) : BigInt(usdNumberToPico(e.spend));
    } catch (err) {
      log.warn({ err: (err as Error).message }, "event not recorded");
    }
  }
}, 100);
const reporter = setInterval(() => void report(false), 1_000);

let stopping = false;
async function stop(): Promise<void> {
  if (stopping) return;
  stopping = true;
  clearInterval(tick);
  clearInterval(reporter);
  try {
    await producer.close(); // drains the buffer: nothing recorded is lost on shutdown
  } catch (err) {
    log.error({ err: (err as Error).message }, "buffer not fully drained");
  }
  await report(true);
  server.close();
  process.exit(0);
}
process.on("SIGTERM", () => void stop());
process.on("SIGINT", () => void stop());
process.on("disconnect", () => void stop());

/**
 * A gateway process for multi-process tests: records EVENTS generated events
 * from SEED through a real producer (Redis buffer or direct to PostgreSQL),
 * in small slices so its flush timer runs meanwhile, closes the producer, and
 * prints what it recorded (a Ledger) as its last stdout line.
 */
import { buildConfig } from "../../src/config/config.js";
import { trafficGenerator } from "../../src/demo/traffic.js";
import { silentLogger } from "../../src/observe/logger.js";
import { createSpendProducer } from "../../src/wiring/create-producer.js";
import { Ledger } from "./ledger.js";

const env = process.env;
const events = Number(env.EVENTS ?? "1000");
const seed = Number(env.SEED ?? "1");
const direct = env.MODE === "direct";
const config = buildConfig(
  {
    general_settings: {
      use_redis_transaction_buffer: !direct,
      proxy_batch_write_at: Number(env.INTERVAL_S ?? "0.1"),
    },
    litellm_settings: { cache: true, cache_params: { type: "redis" } },
    spend_buffer_settings: {
      key_prefix: env.PREFIX ?? "t",
      flush_jitter_seconds: 0.05,
      flush_partitions: Number(env.PARTITIONS ?? "1"),
    },
  },
  env,
);

const producer = await createSpendProducer(config, {
  logger: silentLogger,
  options: { closeTimeoutMs: 120_000 },
});
const ledger = new Ledger();
const gen = trafficGenerator(seed);
const slice = Number(env.SLICE ?? "50");

for (let i = 0; i < events; i += slice) {
  for (let j = i; j < Math.min(events, i + slice); j++) {
    const e = gen();
    producer.record(e);
    ledger.record(e);
  }
  await new Promise((r) => setTimeout(r, 1));
}
await producer.close();
// Exit only once the pipe has taken the whole line: the ledger is large.
process.stdout.write(`${JSON.stringify(ledger.toJSON())}\n`, () => process.exit(0));

/**
 * A gateway process for multi-process tests: records EVENTS generated events
 * from SEED through a real producer (Redis buffer or direct to PostgreSQL),
 * in small slices so its flush timer runs meanwhile, closes the producer, and
 * prints what it recorded (a Ledger) as its last stdout line.
 */
import { buildConfig } from "../../src/config/config.js";
import { trafficGenerator } from "../../src/demo/traffic.js";
import { SpendProducer } from "../../src/produce/producer.js";
import type { SpendSink } from "../../src/contract/spend-sink.js";
import { DirectSink } from "../../src/persist/direct-sink.js";
import { createDb } from "../../src/persist/prisma.js";
import { createRedis } from "../../src/redis/connection.js";
import { redisKeys } from "../../src/redis/keys.js";
import { QueueSink } from "../../src/queue/queue-sink.js";
import { openSpendQueues } from "../../src/queue/spend-queues.js";
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
    spend_buffer_settings: { key_prefix: env.PREFIX ?? "t", flush_jitter_seconds: 0.05 },
  },
  env,
);

const redis = direct ? undefined : createRedis(config.redis, "producer");
const db = direct ? createDb(config.databaseUrl, { max: 2 }) : undefined;
const sink: SpendSink =
  db !== undefined
    ? new DirectSink(db, { transactionTimeoutMs: 30_000 })
    : new QueueSink(
        Array.from({ length: Number(env.PARTITIONS ?? "1") }, (_, p) =>
          openSpendQueues(
            redis ?? createRedis(config.redis, "producer"),
            redisKeys(config.keyPrefix, p),
          ),
        ),
      );
const producer = new SpendProducer({
  sink,
  flushIntervalMs: config.producer.flushIntervalMs,
  flushJitterMs: config.producer.flushJitterMs,
  closeTimeoutMs: 120_000,
  partitions: Number(env.PARTITIONS ?? "1"),
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
redis?.disconnect();
await db?.$disconnect();
// Exit only once the pipe has taken the whole line: the ledger is large.
process.stdout.write(`${JSON.stringify(ledger.toJSON())}\n`, () => process.exit(0));

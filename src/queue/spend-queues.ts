import type { RedisClient } from "../redis/connection.js";
import { Queue, type JobsOptions } from "bullmq";
import { redisKeys, type RedisKeys } from "../redis/keys.js";
import type { DailyJobPayload, EntityJobPayload } from "../contract/spend-batch.js";

/** BullMQ job names inside the spend queues. */
export const ENTITY_JOB = "spend";
export const DAILY_JOB = "daily-spend";

/**
 * Completed jobs are kept a while so Bull Board shows what was flushed;
 * failed ones (poison payloads) are kept until an operator looks at them.
 */
export const SPEND_JOB_OPTIONS: JobsOptions = {
  removeOnComplete: { age: 3_600, count: 1_000 },
  removeOnFail: false,
};

export interface SpendQueues {
  entity: Queue<EntityJobPayload>;
  daily: Queue<DailyJobPayload>;
  /** The names of this partition's keys, and the connection the queues use. */
  keys: RedisKeys;
  connection: RedisClient;
  close(): Promise<void>;
}

export function openSpendQueues(connection: RedisClient, keys: RedisKeys): SpendQueues {
  const opts = { connection, prefix: keys.bullPrefix, defaultJobOptions: SPEND_JOB_OPTIONS };
  const entity = new Queue<EntityJobPayload>(keys.spendQueue, opts);
  const daily = new Queue<DailyJobPayload>(keys.dailySpendQueue, opts);
  // Errors reach the caller through the add() that failed.
  entity.on("error", () => undefined);
  daily.on("error", () => undefined);
  return {
    entity,
    daily,
    keys,
    connection,
    async close() {
      await Promise.all([entity.close(), daily.close()]);
    },
  };
}

/** One SpendQueues per flush partition, indexed by partition. */
export function openPartitionQueues(
  connection: RedisClient,
  prefix: string,
  partitions: number,
): SpendQueues[] {
  return Array.from({ length: partitions }, (_, p) =>
    openSpendQueues(connection, redisKeys(prefix, p)),
  );
}

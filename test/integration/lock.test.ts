import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { Redis } from "ioredis";
import { FlushLock } from "../../src/lock/flush-lock.js";
import { LeaseKeeper, LeaseLostError } from "../../src/lock/lease-keeper.js";
import { redisKeys } from "../../src/redis/keys.js";
import { cleanRedis, TEST_REDIS_URL, uniquePrefix } from "../support/redis.js";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe("flush lock", () => {
  const prefix = uniquePrefix("lock");
  const keys = redisKeys(prefix);
  let redis: Redis;
  before(() => {
    redis = new Redis(TEST_REDIS_URL);
  });
  after(async () => {
    redis.disconnect();
    await cleanRedis(prefix);
  });

  it("admits exactly one holder among many contenders", async () => {
    const locks = Array.from(
      { length: 20 },
      (_, i) => new FlushLock(redis, keys, 5_000, `pod-${i}`),
    );
    const leases = await Promise.all(locks.map((l) => l.acquire()));
    const winners = leases.filter((l) => l !== null);
    assert.equal(winners.length, 1);
    const winner = winners[0];
    assert.ok(winner !== undefined && winner !== null);
    const owner = locks[leases.indexOf(winner)];
    assert.ok(owner !== undefined);
    assert.equal(await owner.release(winner), true);
  });

  it("hands out a larger fencing token with every acquisition", async () => {
    const lock = new FlushLock(redis, keys, 5_000);
    const fences: bigint[] = [];
    for (let i = 0; i < 5; i++) {
      const lease = await lock.acquire();
      assert.ok(lease !== null);
      fences.push(lease.fence);
      await lock.release(lease);
    }
    for (let i = 1; i < fences.length; i++) assert.ok((fences[i] ?? 0n) > (fences[i - 1] ?? 0n));
  });

  it("is taken over only from the holder named, with a newer fence, and the old holder can no longer renew", async () => {
    const dead = new FlushLock(redis, keys, 30_000, "dead-leader");
    const next = new FlushLock(redis, keys, 5_000, "next-leader");
    const old = await dead.acquire();
    assert.ok(old !== null);
    assert.equal(FlushLock.holderOf(old.token), "dead-leader");
    assert.equal(await next.takeOver("dead-leader:someone-else"), null, "not the holder named");
    const lease = await next.takeOver(old.token);
    assert.ok(lease !== null);
    assert.ok(lease.fence > old.fence, "a newer fencing token");
    assert.equal((await next.holder())?.token, lease.token);
    assert.ok(((await next.holder())?.ttlMs ?? 0) <= 5_000, "the new holder's own lease");
    assert.equal(await dead.extend(old), false);
    assert.equal(await dead.release(old), false);
    assert.equal(await next.takeOver(old.token), null, "a second taker finds it gone");
    assert.equal(await next.release(lease), true);
  });

  it("releases and extends only with the holder's own token", async () => {
    const a = new FlushLock(redis, keys, 5_000, "a");
    const b = new FlushLock(redis, keys, 5_000, "b");
    const lease = await a.acquire();
    assert.ok(lease !== null);
    const forged = { ...lease, token: "b:not-the-token" };
    assert.equal(await b.release(forged), false);
    assert.equal(await b.extend(forged), false);
    assert.equal(await b.acquire(), null);
    assert.equal((await a.holder())?.token, lease.token);
    assert.equal(await a.release(lease), true);
    assert.equal(await a.holder(), null);
  });

  it("lets another holder in once a lease expires, and the old one can no longer release it", async () => {
    const a = new FlushLock(redis, keys, 150, "a");
    const b = new FlushLock(redis, keys, 5_000, "b");
    const old = await a.acquire();
    assert.ok(old !== null);
    await sleep(250);
    const next = await b.acquire();
    assert.ok(next !== null && next.fence > old.fence);
    assert.equal(await a.release(old), false, "compare-and-delete keeps the successor's lock");
    assert.equal((await b.holder())?.token, next.token);
    await b.release(next);
  });

  it("renews a lease while work runs and aborts when it is taken away", async () => {
    const lock = new FlushLock(redis, keys, 300, "renewer");
    const lease = await lock.acquire();
    assert.ok(lease !== null);
    const keeper = new LeaseKeeper(lock, lease);
    await sleep(700); // more than two leases: only renewal keeps it
    keeper.assertHeld();
    assert.equal((await lock.holder())?.token, lease.token);
    await redis.del(keys.flushLock); // taken away
    await sleep(250);
    assert.throws(() => keeper.assertHeld(), LeaseLostError);
    assert.equal(keeper.signal.aborted, true);
    keeper.stop();
  });

  it("raises the fence counter to a floor but never lowers it", async () => {
    const lock = new FlushLock(redis, keys, 1_000);
    const start = BigInt((await redis.get(keys.flushFence)) ?? "0");
    assert.equal(await lock.raiseFence(1_000n), start, "returns the counter before");
    assert.equal(await lock.raiseFence(10n), 1_000n);
    assert.equal(await redis.get(keys.flushFence), "1000");
    const lease = await lock.acquire();
    assert.equal(lease?.fence, 1_001n);
    if (lease !== null) await lock.release(lease);
  });
});

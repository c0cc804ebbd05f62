import type { FlushLock, Lease } from "./flush-lock.js";

/**
 * Renews a lease while work runs, and aborts a signal the moment renewal
 * fails or the lease runs out, so the flush stops before it commits rather
 * than write as a holder that no longer holds the lock.
 */
export class LeaseKeeper {
  private readonly controller = new AbortController();
  private timer: NodeJS.Timeout | undefined;
  private expiresAt: number;

  constructor(
    private readonly lock: FlushLock,
    private readonly lease: Lease,
    /** Called with each renewal's outcome, e.g. to run side renewals (job locks). */
    private readonly onRenew?: () => Promise<void>,
  ) {
    this.expiresAt = lease.acquiredAt + lock.leaseMs;
    // Renew at a third of the lease: two renewals can fail before it expires.
    this.timer = setInterval(() => void this.renew(), Math.max(50, Math.floor(lock.leaseMs / 3)));
  }

  get signal(): AbortSignal {
    return this.controller.signal;
  }

  /** Throws if the lease is lost or has (by this process's clock) expired. */
  assertHeld(): void {
    if (this.controller.signal.aborted) throw this.controller.signal.reason as Error;
    if (Date.now() >= this.expiresAt)
      this.abort(new LeaseLostError("lease expired before renewal"));
    if (this.controller.signal.aborted) throw this.controller.signal.reason as Error;
  }

  /** Why the lease was lost, for metrics (undefined while it is held). */
  get lossReason(): "taken_over" | "expired" | "renewal_failed" | undefined {
    const r: unknown = this.controller.signal.reason;
    if (!this.controller.signal.aborted || !(r instanceof LeaseLostError)) return undefined;
    if (r.message.includes("taken over")) return "taken_over";
    return r.message.includes("renewal failed") ? "renewal_failed" : "expired";
  }

  stop(): void {
    if (this.timer !== undefined) clearInterval(this.timer);
    this.timer = undefined;
  }

  private async renew(): Promise<void> {
    if (this.controller.signal.aborted) return;
    const started = Date.now();
    try {
      if (!(await this.lock.extend(this.lease))) {
        this.abort(new LeaseLostError("lock taken over or expired"));
        return;
      }
      this.expiresAt = started + this.lock.leaseMs;
      await this.onRenew?.();
    } catch (err) {
      if (Date.now() >= this.expiresAt)
        this.abort(new LeaseLostError(`renewal failed: ${(err as Error).message}`));
    }
  }

  private abort(err: Error): void {
    this.stop();
    if (!this.controller.signal.aborted) this.controller.abort(err);
  }
}

export class LeaseLostError extends Error {
  readonly code = "LEASE_LOST";
  constructor(detail: string) {
    super(`flush lock lost: ${detail}`);
    this.name = "LeaseLostError";
  }
}

import { createHash, randomBytes } from "node:crypto";
import type { Prisma } from "../generated/prisma/client.js";
import { idProblem } from "../contract/ids.js";
import type { Db } from "../persist/prisma.js";

/**
 * Virtual keys as LiteLLM keeps them: the caller holds `sk-...`, PostgreSQL
 * holds only its SHA-256 (hex) in LiteLLM_VerificationToken.token, and that
 * hash is the `apiKey` every spend row is charged to.
 */

export interface KeyInfo {
  /** The stored hash (LiteLLM_VerificationToken.token). */
  token: string;
  keyAlias?: string;
  userId?: string;
  teamId?: string;
  organizationId?: string;
  /** The models the key may call (`models`); empty: every model. */
  models: readonly string[];
  /** When the key stops working (`expires`, epoch ms); absent: never. */
  expiresAt?: number;
  /** Refused until unblocked (`blocked`). */
  blocked: boolean;
}

export function hashKey(plaintext: string): string {
  return createHash("sha256").update(plaintext).digest("hex");
}

/** A new plaintext key: `sk-` and 32 random bytes, base64url (43 characters). */
export function newKey(): string {
  return `sk-${randomBytes(32).toString("base64url")}`;
}

export interface CreateKeyInput {
  userId?: string;
  teamId?: string;
  organizationId?: string;
  keyAlias?: string;
  /** The models the key may call; absent or empty: every model. */
  models?: readonly string[];
  /** When the key stops working; absent: never. */
  expires?: Date;
  /** A JSON object, stored as given (the caller bounds its size). */
  metadata?: Record<string, unknown>;
}

export interface CreatedKey extends KeyInfo {
  /** The plaintext key: returned once, never stored. */
  key: string;
  /** `sk-...` and the key's last four characters. */
  keyName: string;
  metadata: Record<string, unknown>;
}

/** LiteLLM's `key_name`: enough of a key to tell it apart in a list, never enough to use it. */
export function abbreviateKey(key: string): string {
  return `sk-...${key.slice(-4)}`;
}

/** Most models one key may list. */
export const MAX_KEY_MODELS = 1_000;

const MAX_ID_LENGTH = 256;
const RESERVED = new Set(["__proto__", "constructor", "prototype"]);

export class KeyInputError extends Error {
  readonly code = "KEY_INPUT";
  /** "id": an id breaks the id rules; "field": another field is wrong (answered invalid_body). */
  constructor(
    message: string,
    readonly kind: "id" | "field" = "id",
  ) {
    super(message);
    this.name = "KeyInputError";
  }
}

/** The rules every id the flush stores follows (contract/ids.ts), so a key's owners can always be charged. */
export function checkId(value: string | undefined, name: string): string | undefined {
  if (value === undefined || value === "") return undefined;
  if (value.length > MAX_ID_LENGTH)
    throw new KeyInputError(`${name} is longer than ${MAX_ID_LENGTH} characters`);
  if (RESERVED.has(value)) throw new KeyInputError(`${name} is a reserved name`);
  const problem = idProblem(value);
  if (problem !== undefined) throw new KeyInputError(`${name} ${problem.detail}`);
  return value;
}

/**
 * Creates a key for a user, team and/or organization: creates their rows if
 * missing (a team named with an organization is attached to it), stores the
 * key's hash and returns the plaintext once. Safe to run concurrently for the
 * same new owners: every row is created by INSERT ... ON CONFLICT, which
 * PostgreSQL makes atomic, where Prisma's upsert reads, then inserts, and
 * loses the race with a unique violation.
 */
export async function createKey(db: Db, input: CreateKeyInput): Promise<CreatedKey> {
  const userId = checkId(input.userId, "user_id");
  const teamId = checkId(input.teamId, "team_id");
  const organizationId = checkId(input.organizationId, "organization_id");
  const keyAlias = checkId(input.keyAlias, "key_alias");
  if (userId === undefined && teamId === undefined && organizationId === undefined)
    throw new KeyInputError("a key needs a user_id, team_id or organization_id");
  const models = checkModels(input.models ?? []);
  const metadata = input.metadata ?? {};
  const key = newKey();
  const keyName = abbreviateKey(key);
  const token = hashKey(key);
  // Rows in the order the flush locks them (user, team, membership,
  // organization: ENTITY_KINDS), so a key created for owners whose spend a
  // flush is writing never waits on it in a cycle.
  const statements: Prisma.PrismaPromise<unknown>[] = [];
  if (userId !== undefined)
    statements.push(db.$executeRaw`
      INSERT INTO "LiteLLM_UserTable" (user_id) VALUES (${userId})
      ON CONFLICT (user_id) DO NOTHING`);
  if (teamId !== undefined)
    statements.push(
      organizationId !== undefined
        ? // The WHERE spares a write (and a dead row) when the team is already attached.
          db.$executeRaw`
            INSERT INTO "LiteLLM_TeamTable" AS t (team_id, organization_id)
            VALUES (${teamId}, ${organizationId})
            ON CONFLICT (team_id) DO UPDATE SET organization_id = EXCLUDED.organization_id
            WHERE t.organization_id IS DISTINCT FROM EXCLUDED.organization_id`
        : db.$executeRaw`
            INSERT INTO "LiteLLM_TeamTable" (team_id) VALUES (${teamId})
            ON CONFLICT (team_id) DO NOTHING`,
    );
  if (userId !== undefined && teamId !== undefined)
    statements.push(db.$executeRaw`
      INSERT INTO "LiteLLM_TeamMembership" (user_id, team_id) VALUES (${userId}, ${teamId})
      ON CONFLICT (user_id, team_id) DO NOTHING`);
  if (organizationId !== undefined)
    statements.push(db.$executeRaw`
      INSERT INTO "LiteLLM_OrganizationTable" (organization_id) VALUES (${organizationId})
      ON CONFLICT (organization_id) DO NOTHING`);
  statements.push(
    db.verificationToken.create({
      data: {
        token,
        keyName,
        models: [...models],
        metadata: metadata as Prisma.InputJsonObject,
        ...(input.expires !== undefined ? { expires: input.expires } : {}),
        ...(keyAlias !== undefined ? { keyAlias } : {}),
        ...(userId !== undefined ? { userId } : {}),
        ...(teamId !== undefined ? { teamId } : {}),
        ...(organizationId !== undefined ? { organizationId } : {}),
      },
    }),
  );
  // One transaction, its statements run in this order.
  await db.$transaction(statements);
  return {
    key,
    token,
    keyName,
    models,
    metadata,
    blocked: false,
    ...(input.expires !== undefined ? { expiresAt: input.expires.getTime() } : {}),
    ...(keyAlias !== undefined ? { keyAlias } : {}),
    ...(userId !== undefined ? { userId } : {}),
    ...(teamId !== undefined ? { teamId } : {}),
    ...(organizationId !== undefined ? { organizationId } : {}),
  };
}

/** A key's model list, checked: each name follows the id rules; duplicates go. */
export function checkModels(models: readonly string[]): string[] {
  if (models.length > MAX_KEY_MODELS)
    throw new KeyInputError(
      `models lists ${models.length} models: at most ${MAX_KEY_MODELS}`,
      "field",
    );
  const out: string[] = [];
  for (const [i, m] of models.entries()) {
    if (m === "") throw new KeyInputError(`models[${i}] is empty`);
    checkId(m, `models[${i}]`);
    if (!out.includes(m)) out.push(m);
  }
  return out;
}

/** /key/generate's answer, in LiteLLM's field names. */
export function keyResponse(k: CreatedKey): Record<string, unknown> {
  return {
    key: k.key,
    token: k.token,
    key_name: k.keyName,
    key_alias: k.keyAlias ?? null,
    user_id: k.userId ?? null,
    team_id: k.teamId ?? null,
    organization_id: k.organizationId ?? null,
    models: k.models,
    expires: k.expiresAt !== undefined ? new Date(k.expiresAt).toISOString() : null,
    metadata: k.metadata,
    blocked: k.blocked,
  };
}

/**
 * Whether a key may call `model`: any model when its list is empty or holds
 * `all-proxy-models` or `*` (LiteLLM's), else a name on the list, or one
 * matching an entry that ends in `*` (`mock-*`: every model starting `mock-`).
 */
export function keyAllowsModel(models: readonly string[], model: string): boolean {
  if (models.length === 0) return true;
  for (const m of models) {
    if (m === model || m === "*" || m === "all-proxy-models") return true;
    if (m.endsWith("*") && model.startsWith(m.slice(0, -1))) return true;
  }
  return false;
}

/** A valid key's answer, and until when it may be given without asking PostgreSQL. */
interface Entry {
  info: KeyInfo;
  expires: number;
  /** When the query that read it started: the state it holds is at least this recent. */
  readAt: number;
}

/**
 * How far this process has followed the changes announced for keys (see
 * key-sync.ts): every change announced before `syncedThrough()` (epoch ms,
 * this process's clock) has been applied to the cache. A cached key is
 * answered from memory only while the cache is in sync within `boundMs`, or
 * its entry was read within `boundMs`; otherwise it is read again from
 * PostgreSQL. So a change is acted on within `boundMs` even when the
 * announcements stop arriving.
 */
export interface KeySyncState {
  readonly boundMs: number;
  syncedThrough(): number;
}

/**
 * `lookup` did not ask PostgreSQL: keys in neither of the cache's maps are
 * being looked up faster than its `lookupsPerSecond`, as in a flood of
 * made-up keys. Not an answer about the key: the caller should be told to
 * retry (503, Retry-After: retryAfterSeconds).
 */
export class KeyLookupThrottledError extends Error {
  readonly code = "KEY_LOOKUP_THROTTLED";
  constructor(readonly retryAfterSeconds: number) {
    super(`too many lookups of keys not cached: retry in ${retryAfterSeconds} s`);
    this.name = "KeyLookupThrottledError";
  }
}

export interface KeyCacheOptions {
  /** The clock, in milliseconds. Default Date.now. */
  now?: () => number;
  /** Most unknown keys remembered at once. Default: the cache's maxEntries. */
  maxUnknownEntries?: number;
  /**
   * PostgreSQL lookups per second, on average, for keys in neither map; past
   * it `lookup` rejects with KeyLookupThrottledError. Default
   * DEFAULT_KEY_LOOKUPS_PER_SECOND; Infinity turns the bound off.
   */
  lookupsPerSecond?: number;
  /** How many of those lookups may run back to back after a quiet spell. Default: one second's worth. */
  lookupBurst?: number;
  /**
   * How far the cache follows announced key changes; without it a cached
   * key is answered from memory for the whole TTL (a change made elsewhere is
   * seen when its entry expires).
   */
  sync?: KeySyncState;
}

export const DEFAULT_KEY_LOOKUPS_PER_SECOND = 300;

/** Unknown keys are remembered at most this long, so a key created a moment ago works at once. */
const UNKNOWN_TTL_MS = 1_000;

/** How long a change announcement is remembered against lookups that were running: longer than any query. */
const CHANGE_MEMORY_MS = 60_000;

/**
 * Looks keys up by hash, with bounded in-memory TTL caches in front of
 * PostgreSQL: a gateway answers most requests without a query.
 *
 * Valid keys and unknown keys are kept apart. Anyone can make up keys, so if
 * unknown keys shared the valid keys' map a flood of them would evict the
 * valid ones and turn every legitimate request into a query; here unknown
 * keys evict only each other, for at most a second. And since a made-up key
 * is always new, caching alone cannot stop a flood from costing a query per
 * key: lookups of keys in neither map go through a token bucket
 * (`lookupsPerSecond`, `lookupBurst`), past which `lookup` rejects with
 * KeyLookupThrottledError instead of asking. A valid key whose entry has
 * expired is refreshed without a token: only keys PostgreSQL confirmed reach
 * that map, at most maxEntries of them, each refreshed about once per TTL
 * (a failed refresh leaves the entry expired for the next request to retry),
 * so these queries are bounded by the keys in use, and a flood cannot lock
 * out a client whose entry happens to expire during it. Concurrent lookups
 * of one key share one query (and one token).
 */
export class KeyCache {
  private readonly known = new Map<string, Entry>();
  /** Unknown keys' hashes, to when they may be asked about again. */
  private readonly unknown = new Map<string, number>();
  private readonly inflight = new Map<string, Promise<KeyInfo | null>>();
  private readonly now: () => number;
  private readonly maxUnknownEntries: number;
  private readonly perSecond: number;
  private readonly burst: number;
  private tokens: number;
  private refilledAt: number;
  private readonly sync: KeySyncState | undefined;
  /** Keys announced as changed, to when (this clock); oldest first, pruned as they age. */
  private readonly changedAt = new Map<string, number>();
  /** When every entry was last declared stale (the announcements lapsed). */
  private allStaleAt = -Infinity;

  /** `options` may also be just the clock (the cache's older signature). */
  constructor(
    private readonly db: Db,
    private readonly ttlMs: number,
    private readonly maxEntries: number,
    options: KeyCacheOptions | (() => number) = {},
  ) {
    const o: KeyCacheOptions = typeof options === "function" ? { now: options } : options;
    this.now = o.now ?? Date.now;
    this.maxUnknownEntries = o.maxUnknownEntries ?? maxEntries;
    const perSecond = o.lookupsPerSecond ?? DEFAULT_KEY_LOOKUPS_PER_SECOND;
    if (!(perSecond > 0)) throw new RangeError("lookupsPerSecond must be positive");
    this.burst = o.lookupBurst ?? Math.max(1, perSecond);
    if (!(this.burst >= 1)) throw new RangeError("lookupBurst must be at least 1");
    this.perSecond = perSecond;
    this.tokens = this.burst;
    this.refilledAt = this.now();
    this.sync = o.sync;
  }

  /** Valid keys cached (expired ones included until refreshed or evicted). */
  get size(): number {
    return this.known.size;
  }

  /** Unknown keys remembered. */
  get unknownSize(): number {
    return this.unknown.size;
  }

  /**
   * The key's owner, or null if no such key. Rejects with
   * KeyLookupThrottledError past the lookup rate, or with PostgreSQL's error
   * if it cannot be asked.
   */
  async lookup(plaintext: string): Promise<KeyInfo | null> {
    const token = hashKey(plaintext);
    const now = this.now();
    const known = this.known.get(token);
    if (known !== undefined && known.expires > now && this.inSync(known, now)) return known.info;
    const unknownUntil = this.unknown.get(token);
    if (unknownUntil !== undefined) {
      if (unknownUntil > now) return null;
      this.unknown.delete(token);
    }
    const running = this.inflight.get(token);
    if (running !== undefined) return running;
    if (known === undefined && !this.takeToken(now))
      throw new KeyLookupThrottledError(this.secondsToNextToken());
    const p = this.fetch(token).finally(() => this.inflight.delete(token));
    this.inflight.set(token, p);
    return p;
  }

  /** An entry may be answered from memory: it is recent, or the cache has followed every change recently. */
  private inSync(e: Entry, now: number): boolean {
    const sync = this.sync;
    if (sync === undefined) return true;
    const since = now - sync.boundMs;
    return e.readAt > since || sync.syncedThrough() > since;
  }

  /**
   * Keys changed elsewhere (their hashes): forgotten, so the next request
   * reads them from PostgreSQL; a lookup running now is not cached.
   */
  invalidate(tokens: Iterable<string>): void {
    const now = this.now();
    for (const token of tokens) {
      this.known.delete(token);
      this.unknown.delete(token);
      this.inflight.delete(token);
      this.changedAt.delete(token);
      this.changedAt.set(token, now);
    }
    // Older marks can no longer matter: no lookup runs that long.
    for (const [token, at] of this.changedAt) {
      if (now - at < CHANGE_MEMORY_MS) break;
      this.changedAt.delete(token);
    }
  }

  /**
   * Every entry must be read again before it is answered (the change
   * announcements lapsed, some may have been missed). Entries stay, expired,
   * so they are refreshed without a token of the lookup bucket.
   */
  expireAll(): void {
    this.allStaleAt = this.now();
    for (const e of this.known.values()) e.expires = 0;
    this.unknown.clear();
    this.inflight.clear();
  }

  private takeToken(now: number): boolean {
    const elapsed = now - this.refilledAt;
    if (elapsed > 0) {
      this.tokens = Math.min(this.burst, this.tokens + (elapsed * this.perSecond) / 1000);
      this.refilledAt = now;
    }
    if (this.tokens < 1) return false;
    this.tokens -= 1;
    return true;
  }

  private secondsToNextToken(): number {
    return Math.max(1, Math.ceil((1 - this.tokens) / this.perSecond));
  }

  private async fetch(token: string): Promise<KeyInfo | null> {
    const readAt = this.now();
    const row = await this.db.verificationToken.findUnique({
      where: { token },
      select: {
        keyAlias: true,
        userId: true,
        teamId: true,
        organizationId: true,
        models: true,
        expires: true,
        blocked: true,
      },
    });
    // A row is not proof that a key was issued: the flush creates the key row
    // for spend charged to any hash (so no spend is dropped), so spend ingested
    // under sha256(X) would otherwise make X a working key. createKey always
    // sets an owner; a row with none is bookkeeping, not a key.
    const owned =
      row !== null && (row.userId !== null || row.teamId !== null || row.organizationId !== null);
    const info: KeyInfo | null = !owned
      ? null
      : {
          token,
          ...(row.keyAlias !== null ? { keyAlias: row.keyAlias } : {}),
          ...(row.userId !== null ? { userId: row.userId } : {}),
          ...(row.teamId !== null ? { teamId: row.teamId } : {}),
          ...(row.organizationId !== null ? { organizationId: row.organizationId } : {}),
          models: row.models,
          blocked: row.blocked,
          ...(row.expires !== null ? { expiresAt: row.expires.getTime() } : {}),
        };
    const now = this.now();
    // Changed (or everything declared stale) while the query ran: what it
    // read may predate the change. Answered, never cached.
    const changed = this.changedAt.get(token);
    if ((changed !== undefined && changed >= readAt) || this.allStaleAt >= readAt) return info;
    if (info === null) {
      // Revoked, or never issued: a valid entry left from before must not answer again.
      this.known.delete(token);
      const ttl = Math.min(this.ttlMs, UNKNOWN_TTL_MS);
      if (ttl > 0) remember(this.unknown, token, now + ttl, this.maxUnknownEntries);
    } else if (this.ttlMs > 0) {
      this.unknown.delete(token);
      remember(this.known, token, { info, expires: now + this.ttlMs, readAt }, this.maxEntries);
    }
    return info;
  }

  clear(): void {
    this.known.clear();
    this.unknown.clear();
  }
}

/** Sets a bounded map's entry as its newest; the oldest go first (a Map iterates in insertion order). */
function remember<V>(map: Map<string, V>, key: string, value: V, max: number): void {
  map.delete(key);
  while (map.size >= max) {
    const oldest = map.keys().next();
    if (oldest.done === true) break;
    map.delete(oldest.value);
  }
  map.set(key, value);
}

import { createHash, randomBytes } from "node:crypto";
import type { Prisma } from "../generated/prisma/client.js";
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
}

export interface CreatedKey extends KeyInfo {
  /** The plaintext key: returned once, never stored. */
  key: string;
}

// eslint-disable-next-line no-control-regex
const ID = /^[^\u0000-\u001f\u007f]{1,256}$/;

export class KeyInputError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "KeyInputError";
  }
}

function checkId(value: string | undefined, name: string): string | undefined {
  if (value === undefined || value === "") return undefined;
  if (!ID.test(value) || ["__proto__", "constructor", "prototype"].includes(value))
    throw new KeyInputError(`${name} must be 1-256 characters without control characters`);
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
  const key = newKey();
  const token = hashKey(key);
  // Rows in a fixed order (org, team, user, membership), so concurrent
  // creations never wait on each other in a cycle.
  const statements: Prisma.PrismaPromise<unknown>[] = [];
  if (organizationId !== undefined)
    statements.push(db.$executeRaw`
      INSERT INTO "LiteLLM_OrganizationTable" (organization_id) VALUES (${organizationId})
      ON CONFLICT (organization_id) DO NOTHING`);
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
  if (userId !== undefined)
    statements.push(db.$executeRaw`
      INSERT INTO "LiteLLM_UserTable" (user_id) VALUES (${userId})
      ON CONFLICT (user_id) DO NOTHING`);
  if (userId !== undefined && teamId !== undefined)
    statements.push(db.$executeRaw`
      INSERT INTO "LiteLLM_TeamMembership" (user_id, team_id) VALUES (${userId}, ${teamId})
      ON CONFLICT (user_id, team_id) DO NOTHING`);
  statements.push(
    db.verificationToken.create({
      data: {
        token,
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
    ...(keyAlias !== undefined ? { keyAlias } : {}),
    ...(userId !== undefined ? { userId } : {}),
    ...(teamId !== undefined ? { teamId } : {}),
    ...(organizationId !== undefined ? { organizationId } : {}),
  };
}

/** /key/generate's answer, in LiteLLM's field names. */
export function keyResponse(k: {
  key: string;
  token: string;
  keyAlias?: string;
  userId?: string;
  teamId?: string;
  organizationId?: string;
}): Record<string, string | null> {
  return {
    key: k.key,
    token: k.token,
    key_alias: k.keyAlias ?? null,
    user_id: k.userId ?? null,
    team_id: k.teamId ?? null,
    organization_id: k.organizationId ?? null,
  };
}

interface Entry {
  info: KeyInfo | null;
  expires: number;
}

/**
 * Looks keys up by hash, with a bounded in-memory TTL cache in front of
 * PostgreSQL: a gateway answers most requests without a query. Unknown keys
 * are cached for at most a second, so a key created a moment ago works at
 * once while a flood of bad keys still costs one query per key per second.
 * Concurrent lookups of one key share one query.
 */
export class KeyCache {
  private readonly entries = new Map<string, Entry>();
  private readonly inflight = new Map<string, Promise<KeyInfo | null>>();

  constructor(
    private readonly db: Db,
    private readonly ttlMs: number,
    private readonly maxEntries: number,
    private readonly now: () => number = Date.now,
  ) {}

  get size(): number {
    return this.entries.size;
  }

  /** The key's owner, or null if no such key. Rejects if PostgreSQL cannot be asked. */
  async lookup(plaintext: string): Promise<KeyInfo | null> {
    const token = hashKey(plaintext);
    const hit = this.entries.get(token);
    if (hit !== undefined) {
      if (hit.expires > this.now()) return hit.info;
      this.entries.delete(token);
    }
    const running = this.inflight.get(token);
    if (running !== undefined) return running;
    const p = this.fetch(token).finally(() => this.inflight.delete(token));
    this.inflight.set(token, p);
    return p;
  }

  private async fetch(token: string): Promise<KeyInfo | null> {
    const row = await this.db.verificationToken.findUnique({ where: { token } });
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
        };
    const ttl = info === null ? Math.min(this.ttlMs, 1_000) : this.ttlMs;
    if (ttl > 0) {
      // Bounded: the oldest insertion goes first (a Map iterates in insertion order).
      while (this.entries.size >= this.maxEntries) {
        const oldest = this.entries.keys().next();
        if (oldest.done === true) break;
        this.entries.delete(oldest.value);
      }
      this.entries.set(token, { info, expires: this.now() + ttl });
    }
    return info;
  }

  clear(): void {
    this.entries.clear();
  }
}

import { BUDGET_FIELDS } from "./routes/budgets.js";
import { z } from "zod";
import type { Prisma } from "../generated/prisma/client.js";
import type { Db } from "../persist/prisma.js";
import { expiryAfter } from "./duration.js";
import { checkId, checkModels, hashKey, KeyInputError } from "./virtual-keys.js";

/**
 * Key management behind LiteLLM's admin routes (/key/info, /key/list,
 * /key/update, /key/block, /key/unblock, /key/delete): what the caller may
 * send, checked with a sentence naming the field, and what PostgreSQL does.
 *
 * A key is a row of LiteLLM_VerificationToken with an owner (a user, team or
 * organization). Rows without one are the flush's bookkeeping (spend charged
 * to a hash nobody issued) and are no key here either: never listed, shown,
 * changed or deleted. Deleting a key makes its row one of those: the owners,
 * alias, models, expiry and metadata go, the token and its spend stay, so
 * what the key spent is still counted and the hash never works again.
 */

/** A key named by the caller: the plaintext `sk-...` or its SHA-256 token (64 hex digits). */
export interface KeyRef {
  token: string;
  /** How to name it back without repeating a plaintext key: `sk-...abcd` or the token. */
  shown: string;
}

const TOKEN = /^[0-9a-f]{64}$/;
const PLAINTEXT = /^sk-[\x21-\x7e]{1,253}$/;

export function keyRef(value: string, field = "key"): KeyRef {
  if (TOKEN.test(value)) return { token: value, shown: value };
  if (PLAINTEXT.test(value)) return { token: hashKey(value), shown: `sk-...${value.slice(-4)}` };
  throw new KeyInputError(
    `${field} must be a virtual key (sk-..., printable ASCII, at most 256 characters) or its token (the SHA-256, 64 lowercase hex digits)`,
    "field",
  );
}

/** Most levels of nesting a key's metadata may have (PostgreSQL's jsonb parser recurses). */
const MAX_METADATA_DEPTH = 32;

/**
 * A key's `metadata`: a JSON object of at most `maxBytes` (its JSON, UTF-8),
 * at most 32 levels deep, whose strings PostgreSQL's jsonb can store (no NUL,
 * no lone surrogate: it refuses both).
 */
export function checkMetadata(value: unknown, maxBytes: number): Record<string, unknown> {
  if (typeof value !== "object" || value === null || Array.isArray(value))
    throw new KeyInputError("metadata must be a JSON object", "field");
  // Walked without recursion, before anything else recurses over it
  // (JSON.stringify would overflow the stack on a deep enough body).
  const stack: { v: unknown; depth: number }[] = [{ v: value, depth: 1 }];
  const bad = (s: string): boolean => s.includes("\0") || !s.isWellFormed();
  for (let item = stack.pop(); item !== undefined; item = stack.pop()) {
    const { v, depth } = item;
    if (typeof v === "string") {
      if (bad(v))
        throw new KeyInputError(
          "metadata holds a string with a NUL character or a lone surrogate, which PostgreSQL cannot store",
          "field",
        );
    } else if (typeof v === "object" && v !== null) {
      if (depth > MAX_METADATA_DEPTH)
        throw new KeyInputError(
          `metadata is nested deeper than ${MAX_METADATA_DEPTH} levels`,
          "field",
        );
      if (Array.isArray(v)) for (const x of v) stack.push({ v: x, depth: depth + 1 });
      else
        for (const [k, x] of Object.entries(v)) {
          if (bad(k))
            throw new KeyInputError(
              "metadata holds a key with a NUL character or a lone surrogate, which PostgreSQL cannot store",
              "field",
            );
          stack.push({ v: x, depth: depth + 1 });
        }
    }
  }
  const bytes = Buffer.byteLength(JSON.stringify(value), "utf8");
  if (bytes > maxBytes)
    throw new KeyInputError(
      `metadata is ${bytes} bytes of JSON: at most ${maxBytes} (spend_buffer_settings.key_metadata_max_bytes)`,
      "field",
    );
  return value as Record<string, unknown>;
}

/** The first problem zod found, as a sentence naming the field; unknown fields all named. */
export function describeIssue(error: z.ZodError, known: readonly string[]): string {
  const issue = error.issues[0];
  if (issue === undefined) return "invalid body";
  if (issue.code === "unrecognized_keys")
    return `unknown field${issue.keys.length > 1 ? "s" : ""} ${issue.keys
      .map((k) => JSON.stringify(k.slice(0, 60)))
      .join(", ")}: the fields are ${known.join(", ")}`;
  const path = issue.path.map(String).join(".");
  return `${path !== "" ? `${path}: ` : ""}${issue.message}`;
}

const optionalId = z.string().nullish();

/** /key/generate's body, in LiteLLM's names. */
export const generateBody = z.strictObject({
  user_id: optionalId,
  team_id: optionalId,
  organization_id: optionalId,
  key_alias: optionalId,
  models: z.array(z.string()).nullish(),
  duration: z.string().nullish(),
  metadata: z.unknown().optional(),
  ...BUDGET_FIELDS,
});
export const GENERATE_FIELDS = Object.keys(generateBody.shape);

/** /key/update's body: the key, and what to change (null clears). */
export const updateBody = z.strictObject({
  key: z.string(),
  key_alias: optionalId,
  models: z.array(z.string()).nullish(),
  duration: z.string().nullish(),
  metadata: z.unknown().optional(),
  blocked: z.boolean().optional(),
  ...BUDGET_FIELDS,
});
export const UPDATE_FIELDS = Object.keys(updateBody.shape);

/** Fields /key/update does not change (a key's owners decide whom its spend is charged to). */
export const OWNER_FIELDS = ["user_id", "team_id", "organization_id"] as const;

export const keyOnlyBody = z.strictObject({ key: z.string() });
export const deleteBody = z.strictObject({ keys: z.array(z.string()).min(1).max(1_000) });

/** What a request may change of a key, checked. */
export interface KeyChanges {
  keyAlias?: string | null;
  models?: string[];
  expires?: Date | null;
  metadata?: Record<string, unknown>;
  blocked?: boolean;
}

/** The optional fields /key/generate and /key/update share, checked. */
export function keyChanges(
  b: {
    key_alias?: string | null | undefined;
    models?: string[] | null | undefined;
    duration?: string | null | undefined;
    metadata?: unknown;
    blocked?: boolean | undefined;
  },
  opts: { metadataMaxBytes: number; now: number },
): KeyChanges {
  const out: KeyChanges = {};
  if (b.key_alias !== undefined)
    out.keyAlias = b.key_alias === null ? null : (checkId(b.key_alias, "key_alias") ?? null);
  if (b.models !== undefined) out.models = b.models === null ? [] : checkModels(b.models);
  if (b.duration !== undefined) {
    if (b.duration === null) out.expires = null;
    else {
      const e = expiryAfter(b.duration, opts.now);
      if (!e.ok) throw new KeyInputError(e.message, "field");
      out.expires = new Date(e.at);
    }
  }
  if (b.metadata !== undefined)
    out.metadata = b.metadata === null ? {} : checkMetadata(b.metadata, opts.metadataMaxBytes);
  if (b.blocked !== undefined) out.blocked = b.blocked;
  return out;
}

const RECORD_SELECT = {
  token: true,
  keyName: true,
  keyAlias: true,
  userId: true,
  teamId: true,
  organizationId: true,
  models: true,
  expires: true,
  blocked: true,
  metadata: true,
  spend: true,
  createdAt: true,
  updatedAt: true,
} as const;

type KeyRow = Prisma.VerificationTokenGetPayload<{ select: typeof RECORD_SELECT }>;

/** A key as the admin routes show it, in LiteLLM's names; spend as an exact decimal string. */
export interface KeyRecord {
  token: string;
  key_name: string | null;
  key_alias: string | null;
  user_id: string | null;
  team_id: string | null;
  organization_id: string | null;
  models: string[];
  expires: string | null;
  blocked: boolean;
  metadata: unknown;
  spend: string;
  created_at: string;
  updated_at: string;
}

function record(r: KeyRow): KeyRecord {
  return {
    token: r.token,
    key_name: r.keyName,
    key_alias: r.keyAlias,
    user_id: r.userId,
    team_id: r.teamId,
    organization_id: r.organizationId,
    models: r.models,
    expires: r.expires?.toISOString() ?? null,
    blocked: r.blocked,
    metadata: r.metadata,
    // Twelve decimals, as every other amount the gateway answers (spend is numeric(38,12)).
    spend: r.spend.toFixed(12),
    created_at: r.createdAt.toISOString(),
    updated_at: r.updatedAt.toISOString(),
  };
}

/** Rows that are keys: they have an owner. */
const OWNED = {
  OR: [{ userId: { not: null } }, { teamId: { not: null } }, { organizationId: { not: null } }],
} satisfies Prisma.VerificationTokenWhereInput;

export async function findKey(db: Db, token: string): Promise<KeyRecord | null> {
  const r = await db.verificationToken.findFirst({
    where: { token, ...OWNED },
    select: RECORD_SELECT,
  });
  return r === null ? null : record(r);
}

export interface KeyListQuery {
  page: number;
  size: number;
  userId?: string;
  teamId?: string;
  organizationId?: string;
  keyAlias?: string;
}

/** One page of keys, newest first (LiteLLM's order: created_at, then token, descending). */
export async function listKeys(
  db: Db,
  q: KeyListQuery,
): Promise<{ keys: KeyRecord[]; totalCount: number }> {
  const where: Prisma.VerificationTokenWhereInput = {
    ...OWNED,
    ...(q.userId !== undefined ? { userId: q.userId } : {}),
    ...(q.teamId !== undefined ? { teamId: q.teamId } : {}),
    ...(q.organizationId !== undefined ? { organizationId: q.organizationId } : {}),
    ...(q.keyAlias !== undefined ? { keyAlias: q.keyAlias } : {}),
  };
  const [rows, totalCount] = await db.$transaction([
    db.verificationToken.findMany({
      where,
      select: RECORD_SELECT,
      orderBy: [{ createdAt: "desc" }, { token: "desc" }],
      skip: (q.page - 1) * q.size,
      take: q.size,
    }),
    db.verificationToken.count({ where }),
  ]);
  return { keys: rows.map(record), totalCount };
}

/** Applies `changes` to a key; null if there is no such key. */
export async function updateKey(
  db: Db,
  token: string,
  changes: KeyChanges,
): Promise<KeyRecord | null> {
  const data: Prisma.VerificationTokenUpdateManyMutationInput = { updatedAt: new Date() };
  if (changes.keyAlias !== undefined) data.keyAlias = changes.keyAlias;
  if (changes.models !== undefined) data.models = changes.models;
  if (changes.expires !== undefined) data.expires = changes.expires;
  if (changes.metadata !== undefined) data.metadata = changes.metadata as Prisma.InputJsonObject;
  if (changes.blocked !== undefined) data.blocked = changes.blocked;
  const { count } = await db.verificationToken.updateMany({ where: { token, ...OWNED }, data });
  if (count === 0) return null;
  return findKey(db, token);
}

/**
 * Deletes keys, all or none: the tokens that are no key come back and
 * nothing changes. Each row keeps its token and spend and loses everything
 * that made it a key (see the top of this file).
 */
export async function deleteKeys(
  db: Db,
  tokens: readonly string[],
): Promise<{ ok: true } | { ok: false; missing: string[] }> {
  const wanted = [...new Set(tokens)];
  return db.$transaction(async (tx) => {
    const rows = await tx.$queryRaw<{ token: string }[]>`
      SELECT token FROM "LiteLLM_VerificationToken"
      WHERE token = ANY(${wanted}::text[])
        AND (user_id IS NOT NULL OR team_id IS NOT NULL OR organization_id IS NOT NULL)
      ORDER BY token
      FOR UPDATE`;
    const found = new Set(rows.map((r) => r.token));
    const missing = wanted.filter((t) => !found.has(t));
    if (missing.length > 0) return { ok: false, missing };
    await tx.$executeRaw`
      UPDATE "LiteLLM_VerificationToken"
      SET user_id = NULL, team_id = NULL, organization_id = NULL, key_alias = NULL,
          key_name = NULL, models = ARRAY[]::text[], expires = NULL, blocked = false,
          metadata = '{}'::jsonb, updated_at = now()
      WHERE token = ANY(${wanted}::text[])`;
    return { ok: true };
  });
}

import path from "node:path";
import { fileURLToPath } from "node:url";

/**
 * Where the schema and migrations live, and the error every migration step
 * throws: shared by migrate.ts (the public API) and schema-engine.ts (the
 * Wasm engine), which would otherwise import each other.
 */

const REPO_ROOT = fileURLToPath(new URL("../../", import.meta.url));
export const DEFAULT_SCHEMA_PATH = path.join(REPO_ROOT, "prisma", "schema.prisma");
export const DEFAULT_MIGRATIONS_DIR = path.join(REPO_ROOT, "prisma", "migrations");

export class MigrationError extends Error {
  readonly code = "MIGRATION";
  override readonly name = "MigrationError";
}

/** A path relative to the repository root (absolute paths pass through). */
export function resolveFromRoot(p: string): string {
  return path.resolve(REPO_ROOT, p);
}

import type { DailyKind, EntityKind } from "../contract/spend-batch.js";

/**
 * Where each kind of spend row lands. Table and column names are code
 * constants (they are interpolated into SQL); every value is a parameter.
 */
export interface EntityTable {
  readonly table: string;
  /** Primary key columns, in the order of the row's id fields. */
  readonly keyColumns: readonly string[];
}

export const ENTITY_TABLES: Readonly<Record<EntityKind, EntityTable>> = {
  key: { table: "LiteLLM_VerificationToken", keyColumns: ["token"] },
  user: { table: "LiteLLM_UserTable", keyColumns: ["user_id"] },
  team: { table: "LiteLLM_TeamTable", keyColumns: ["team_id"] },
  team_member: { table: "LiteLLM_TeamMembership", keyColumns: ["user_id", "team_id"] },
  org: { table: "LiteLLM_OrganizationTable", keyColumns: ["organization_id"] },
  end_user: { table: "LiteLLM_EndUserTable", keyColumns: ["user_id"] },
  tag: { table: "LiteLLM_TagTable", keyColumns: ["tag_name"] },
};

export interface DailyTable {
  readonly table: string;
  readonly entityColumn: string;
}

export const DAILY_TABLES: Readonly<Record<DailyKind, DailyTable>> = {
  user: { table: "LiteLLM_DailyUserSpend", entityColumn: "user_id" },
  team: { table: "LiteLLM_DailyTeamSpend", entityColumn: "team_id" },
  org: { table: "LiteLLM_DailyOrganizationSpend", entityColumn: "organization_id" },
  end_user: { table: "LiteLLM_DailyEndUserSpend", entityColumn: "end_user_id" },
  tag: { table: "LiteLLM_DailyTagSpend", entityColumn: "tag" },
};

/** The daily unique key after the entity column: never NULL, absent is ''. */
export const DAILY_DIMENSION_COLUMNS = [
  "date",
  "api_key",
  "model",
  "model_group",
  "custom_llm_provider",
  "mcp_namespaced_tool_name",
  "endpoint",
] as const;

export const DAILY_COUNTER_COLUMNS = [
  "prompt_tokens",
  "completion_tokens",
  "cache_read_input_tokens",
  "cache_creation_input_tokens",
  "api_requests",
  "successful_requests",
  "failed_requests",
] as const;

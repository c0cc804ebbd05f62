import type { Dashboard } from "@grafana/schema";

/**
 * Grafana's dashboard model (`@grafana/schema`'s `Dashboard`) as a JSON file
 * spells it: the schema's TypeScript enums (MappingType.ValueToText,
 * ThresholdsMode.Absolute, ...) by their values ("value", "absolute"), since
 * a file cannot name an enum member. Numeric enums (VariableHide,
 * VariableRefresh) take plain numbers already; every other type is kept.
 */
export type AsJson<T> = T extends string
  ? `${T}`
  : T extends number | boolean | bigint | null | undefined
    ? T
    : T extends readonly (infer U)[]
      ? AsJson<U>[]
      : T extends object
        ? { [K in keyof T]: AsJson<T[K]> }
        : T;

/** What an exported dashboard adds for the import dialog: the datasources to ask for. */
export interface ImportSection {
  __inputs?: {
    name: string;
    label: string;
    description: string;
    type: string;
    pluginId: string;
    pluginName: string;
  }[];
  __requires?: { type: string; id: string; name: string; version: string }[];
}

/** A dashboard file, exactly: an object literal of this type fails on any field Grafana does not know. */
export type DashboardFile = AsJson<Dashboard> & ImportSection;

/**
 * The same with every string literal type widened to string, for a JSON
 * import (TypeScript types a JSON module's strings as string): the shape and
 * the types of the fields are checked, not the values a string may take.
 */
export type Widened<T> = T extends string
  ? string
  : T extends number | boolean | bigint | null | undefined
    ? T
    : T extends readonly (infer U)[]
      ? Widened<U>[]
      : T extends object
        ? { [K in keyof T]: Widened<T[K]> }
        : T;

import { z } from "zod";
import {
  LITELLM_CACHE_PARAMS,
  LITELLM_GENERAL_SETTINGS,
  LITELLM_LITELLM_SETTINGS,
  LITELLM_MODEL_INFO,
  LITELLM_MODEL_PARAMS,
  LITELLM_REFUSED,
  LITELLM_SECTIONS,
} from "./litellm-keys.js";

/**
 * How a LiteLLM proxy config.yaml loads here: LiteLLM's own keys this project
 * does not read (litellm-keys.ts) are set aside before validation, unread and
 * unvalidated (their `os.environ/` references unresolved), and named once at
 * start; everything left is validated by the strict schema, so any other
 * unknown key is refused, with a hint when it is a near miss of one of ours.
 */

type Path = readonly PropertyKey[];
type Obj = Record<string, unknown>;

const isObj = (v: unknown): v is Obj => typeof v === "object" && v !== null && !Array.isArray(v);

/**
 * The keys the schema declares for the object at `path` (keys and list
 * indices, as in zod's issue paths): ours. Read from the schema, so the
 * set-aside and the hints cannot drift from what is validated.
 */
export function schemaKeys(schema: unknown, path: Path): readonly string[] {
  let s = schema;
  let i = 0;
  for (;;) {
    if (s instanceof z.ZodOptional || s instanceof z.ZodDefault) {
      s = s.unwrap();
      continue;
    }
    if (i === path.length) return s instanceof z.ZodObject ? Object.keys(s.shape) : [];
    const step = path[i++];
    if (s instanceof z.ZodObject && typeof step === "string")
      s = (s.shape as Record<string, unknown>)[step];
    else if (s instanceof z.ZodArray && typeof step === "number") s = s.element;
    else if (s instanceof z.ZodRecord && typeof step === "string") s = s.valueType;
    else return [];
  }
}

/** Edit distance (insert, delete, substitute, swap two neighbours), case and `-`/`_` aside. */
function distance(a: string, b: string): number {
  const x = a.toLowerCase().replaceAll("-", "_");
  const y = b.toLowerCase().replaceAll("-", "_");
  const d: number[][] = Array.from({ length: x.length + 1 }, (_, i) =>
    Array.from({ length: y.length + 1 }, (_, j) => (i === 0 ? j : j === 0 ? i : 0)),
  );
  const at = (i: number, j: number): number => d[i]?.[j] ?? Number.MAX_SAFE_INTEGER;
  for (let i = 1; i <= x.length; i++)
    for (let j = 1; j <= y.length; j++) {
      let v = Math.min(
        at(i - 1, j) + 1,
        at(i, j - 1) + 1,
        at(i - 1, j - 1) + (x[i - 1] === y[j - 1] ? 0 : 1),
      );
      if (i > 1 && j > 1 && x[i - 1] === y[j - 2] && x[i - 2] === y[j - 1])
        v = Math.min(v, at(i - 2, j - 2) + 1);
      const row = d[i];
      if (row !== undefined) row[j] = v;
    }
  return at(x.length, y.length);
}

/** The one of `ours` that `key` is a typo of: at most one edit away (two for names over 6 characters). */
export function didYouMean(key: string, ours: readonly string[]): string | undefined {
  let best: string | undefined;
  let bestDistance = Number.MAX_SAFE_INTEGER;
  for (const k of ours) {
    const dist = distance(key, k);
    if (dist <= (k.length > 6 ? 2 : 1) && dist < bestDistance) {
      best = k;
      bestDistance = dist;
    }
  }
  return best;
}

/** What to add to zod's `Unrecognized key(s)` at `path`: why LiteLLM's key is refused, or the key meant. */
export function unrecognizedKeyHint(schema: unknown, path: Path, keys: readonly string[]): string {
  const section = path.filter((p): p is string => typeof p === "string").join(".");
  const hints: string[] = [];
  for (const key of keys) {
    const reason = LITELLM_REFUSED[section === "" ? key : `${section}.${key}`];
    const meant = reason === undefined ? didYouMean(key, schemaKeys(schema, path)) : undefined;
    const hint = reason ?? (meant !== undefined ? `did you mean "${meant}"?` : undefined);
    if (hint !== undefined) hints.push(keys.length === 1 ? hint : `"${key}": ${hint}`);
  }
  return hints.length > 0 ? ` (${hints.join("; ")})` : "";
}

export interface SetAside {
  /** The document without the keys set aside (the input is not changed). */
  doc: unknown;
  /** Their dotted paths, e.g. `litellm_settings.drop_params`, `model_list[0].litellm_params.rpm`. */
  ignored: string[];
}

/**
 * Sets aside LiteLLM's keys that `schema` does not declare. In the sections
 * LiteLLM keeps open (a deployment's litellm_params and model_info) every
 * key that is not ours is set aside, unless it is a near miss of one of ours
 * and not a LiteLLM name: that one stays, for the schema to refuse.
 */
export function setAsideLiteLLMKeys(doc: unknown, schema: unknown): SetAside {
  const ignored: string[] = [];
  const sift = (
    obj: Obj,
    path: Path,
    shown: string,
    theirs: readonly string[],
    open = false,
  ): Obj => {
    const ours = schemaKeys(schema, path);
    // fromEntries: a key named __proto__ stays a key (assignment would set the prototype).
    return Object.fromEntries(
      Object.entries(obj).filter(([k]) => {
        const setAside =
          !ours.includes(k) && (theirs.includes(k) || (open && didYouMean(k, ours) === undefined));
        if (setAside) ignored.push(shown === "" ? k : `${shown}.${k}`);
        return !setAside;
      }),
    );
  };
  if (!isObj(doc)) return { doc, ignored };
  const top = sift(doc, [], "", LITELLM_SECTIONS);
  if (isObj(top.general_settings))
    top.general_settings = sift(
      top.general_settings,
      ["general_settings"],
      "general_settings",
      LITELLM_GENERAL_SETTINGS,
    );
  if (isObj(top.litellm_settings)) {
    const ls = sift(
      top.litellm_settings,
      ["litellm_settings"],
      "litellm_settings",
      LITELLM_LITELLM_SETTINGS,
    );
    if (isObj(ls.cache_params))
      ls.cache_params = sift(
        ls.cache_params,
        ["litellm_settings", "cache_params"],
        "litellm_settings.cache_params",
        LITELLM_CACHE_PARAMS,
      );
    top.litellm_settings = ls;
  }
  if (Array.isArray(top.model_list))
    top.model_list = top.model_list.map((entry: unknown, i) => {
      if (!isObj(entry)) return entry;
      const d: Obj = { ...entry };
      for (const [part, theirs] of [
        ["litellm_params", LITELLM_MODEL_PARAMS],
        ["model_info", LITELLM_MODEL_INFO],
      ] as const) {
        const v = d[part];
        if (isObj(v))
          d[part] = sift(v, ["model_list", i, part], `model_list[${i}].${part}`, theirs, true);
      }
      return d;
    });
  return { doc: top, ignored };
}

/** The one start-up warning naming what was set aside; undefined when nothing was. */
export function ignoredKeysWarning(ignored: readonly string[]): string | undefined {
  return ignored.length === 0
    ? undefined
    : `ignored: LiteLLM settings this gateway does not use: ${ignored.join(", ")}`;
}

/** Gives ignoredKeysWarning to `say` (a log, stderr), when there is one: each process does once at start. */
export function reportIgnoredKeys(
  ignored: readonly string[],
  say: (warning: string) => void,
): void {
  const warning = ignoredKeysWarning(ignored);
  if (warning !== undefined) say(warning);
}

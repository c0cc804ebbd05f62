import { z } from "zod";
import { CONFIG_FILE_SCHEMA } from "./config.js";

/**
 * docs/configuration.md, made from the configuration schema itself (every
 * setting's type, bounds, default and `.describe()` text), so the reference
 * cannot drift from what the code accepts: `npm run docs:config` writes it,
 * and a test fails when the file differs from this.
 */

interface Json {
  type?: string;
  description?: string;
  default?: unknown;
  minimum?: number;
  maximum?: number;
  exclusiveMinimum?: number;
  minLength?: number;
  maxLength?: number;
  pattern?: string;
  const?: unknown;
  enum?: unknown[];
  anyOf?: Json[];
  items?: Json;
  properties?: Record<string, Json>;
  additionalProperties?: Json | boolean;
}

/**
 * A section of the reference. `path` leads from the file's root to an object
 * whose properties are listed; `"[]"` steps into a list's entries. `skip`:
 * properties another section documents. `nested`: an object-valued property's
 * own properties are listed too, as `parent.child`.
 */
const SECTIONS: { key: string; path: string[]; intro: string; skip?: string[]; nested?: true }[] = [
  {
    key: "general_settings",
    path: ["general_settings"],
    intro:
      "LiteLLM's own section: the switch for the Redis buffer, the seal interval, PostgreSQL and the admin secret.",
  },
  {
    key: "litellm_settings",
    path: ["litellm_settings"],
    intro:
      "LiteLLM's section: only its cache switch and `cache_params` (below) are read; its other settings (`drop_params`, `num_retries`, callbacks, ...) are ignored and named at start.",
    skip: ["cache_params"],
  },
  {
    key: "litellm_settings.cache_params",
    path: ["litellm_settings", "cache_params"],
    intro:
      "Where Redis is, in LiteLLM's names. `REDIS_URL` and `REDIS_CLUSTER_NODES` win over them.",
  },
  {
    key: "model_list",
    path: ["model_list", "[]"],
    intro:
      "LiteLLM's model list, for the reference gateway: each entry one deployment of a model clients ask for by `model_name`. LiteLLM's other parameters in `litellm_params` and `model_info` (`rpm`, `tpm`, `api_version`, `id`, ...) are ignored and named at start; one a letter or two from one of the keys below (`api_bse`) is refused as the typo it is.",
    nested: true,
  },
  {
    key: "spend_buffer_settings",
    path: ["spend_buffer_settings"],
    intro: "Everything this project adds.",
  },
];

function bound(n: number | undefined): string | undefined {
  return n === undefined || Math.abs(n) >= Number.MAX_SAFE_INTEGER ? undefined : String(n);
}

function typeOf(s: Json): string {
  if (s.const !== undefined) return `\`${JSON.stringify(s.const)}\``;
  if (s.enum !== undefined) return `one of ${s.enum.map((v) => `\`${String(v)}\``).join(", ")}`;
  if (s.anyOf !== undefined) return s.anyOf.map(typeOf).join(" or ");
  const lo = bound(s.minimum);
  const hi = bound(s.maximum);
  const range =
    s.exclusiveMinimum !== undefined
      ? `more than ${s.exclusiveMinimum}${hi !== undefined ? `, at most ${hi}` : ""}`
      : lo !== undefined && hi !== undefined
        ? `${lo} to ${hi}`
        : lo !== undefined
          ? `${lo} or more`
          : hi !== undefined
            ? `at most ${hi}`
            : undefined;
  switch (s.type) {
    case "integer":
      return range !== undefined ? `integer, ${range}` : "integer";
    case "number":
      return range !== undefined ? `number, ${range}` : "number";
    case "string": {
      const len =
        s.minLength !== undefined && s.maxLength !== undefined
          ? `, ${s.minLength} to ${s.maxLength} characters`
          : s.minLength !== undefined && s.minLength > 1
            ? `, at least ${s.minLength} characters`
            : "";
      return s.pattern !== undefined ? `string matching \`${s.pattern}\`` : `string${len}`;
    }
    case "boolean":
      return "boolean";
    case "array":
      return s.items !== undefined ? `list of ${typeOf(s.items)}` : "list";
    case "object":
      return "map";
    default:
      return "any";
  }
}

function setting(name: string, s: Json): string[] {
  const out = [`### \`${name}\``, ""];
  const facts = [`Type: ${typeOf(s)}.`];
  if (s.default !== undefined) facts.push(`Default: \`${JSON.stringify(s.default)}\`.`);
  out.push(facts.join(" "), "");
  if (s.description !== undefined) out.push(s.description, "");
  return out;
}

/** The whole reference, as Markdown. */
export function renderConfigReference(): string {
  const root = z.toJSONSchema(CONFIG_FILE_SCHEMA, { io: "input", unrepresentable: "any" }) as Json;
  const L: string[] = [
    "# Configuration reference",
    "",
    "<!-- Generated from src/config/config.ts by `npm run docs:config`: edit the schema, not this file. -->",
    "",
    "One YAML file (`--config path`, or `SPEND_CONFIG`), LiteLLM's `proxy_config.yaml` shape: the keys read",
    "here keep LiteLLM's names, so an existing LiteLLM proxy config loads as it is. Unknown keys and wrong",
    "types stop the process at start (exit 2, one line naming the key, and the key meant when it is a near",
    'miss of one of ours: `(did you mean "proxy_batch_write_at"?)`). Any string may be `os.environ/NAME`,',
    "replaced by that environment variable (keep secrets out of the file). With no file at all, the buffer",
    "is on against local Redis and PostgreSQL on their standard ports; a file that does not set",
    "`general_settings.use_redis_transaction_buffer: true` runs with it off, as LiteLLM does. With neither",
    "`DATABASE_URL` nor `general_settings.database_url`, PostgreSQL is",
    "`postgresql://postgres@127.0.0.1:5432/test`.",
    "",
    "LiteLLM's own settings that this project does not read are not unknown: they are ignored, their values",
    "unchecked (their `os.environ/` references unresolved), and named in one warning at start (`ignored:",
    "LiteLLM settings this gateway does not use: router_settings, litellm_settings.drop_params,",
    "model_list[0].litellm_params.rpm, ...`). They are LiteLLM's sections this project has no use for",
    "(`router_settings`, `environment_variables`, `callback_settings`, `guardrails`, `credential_list`,",
    "`mcp_servers`, `vector_store_registry`), whole, and the keys LiteLLM documents in the sections below",
    "(the lists, with where in LiteLLM's documentation each comes from, are in",
    "`src/config/litellm-keys.ts`). A few are refused instead, saying why, because ignoring them would",
    "change where spend goes or who is served: `include`, `general_settings.allowed_ips` and LiteLLM's other",
    "access restrictions, and the Redis Cluster, Sentinel and IAM settings of `cache_params` (write Cluster",
    "nodes as `cluster_nodes`).",
    "",
    "## Environment",
    "",
    "- `DATABASE_URL`: PostgreSQL, wins over `general_settings.database_url`.",
    "- `REDIS_URL`: Redis (`redis://` or `rediss://`), wins over `cache_params`.",
    "- `REDIS_CLUSTER_NODES`: comma-separated `host:port` seeds of a Redis Cluster.",
    "- `SPEND_CONFIG`: the configuration file, when `--config` is not given.",
    "- `METRICS_PORT`: the worker's HTTP port, wins over `spend_buffer_settings.metrics_port`.",
    "- `LOG_LEVEL`: wins over `spend_buffer_settings.log_level`.",
    "",
  ];
  for (const section of SECTIONS) {
    let node: Json | undefined = root;
    for (const p of section.path) node = p === "[]" ? node?.items : node?.properties?.[p];
    const props = node?.properties ?? {};
    L.push(`## \`${section.key}\``, "", section.intro, "");
    for (const [name, s] of Object.entries(props)) {
      if (section.skip?.includes(name) === true) continue;
      L.push(...setting(name, s));
      if (section.nested === true)
        for (const [child, c] of Object.entries(s.properties ?? {}))
          L.push(...setting(`${name}.${child}`, c));
    }
  }
  return `${L.join("\n").trimEnd()}\n`;
}

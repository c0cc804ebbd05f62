import type { AppConfig, ModelDeployment } from "../config/config.js";
import {
  SpendEventError,
  checkEndUserAndTags,
  dailyContextBytes,
  validateSpendEvent,
  type ChargedContext,
} from "../produce/spend-event.js";
import type { KeyInfo } from "./virtual-keys.js";

export const CHAT_ENDPOINT = "/v1/chat/completions";
export const EMBEDDINGS_ENDPOINT = "/v1/embeddings";
export const MOCK_PROVIDER = "mock";
const ENDPOINTS = [CHAT_ENDPOINT, EMBEDDINGS_ENDPOINT] as const;
export type ChargedEndpoint = (typeof ENDPOINTS)[number];

/**
 * Whether a request can be charged, decided before the model runs: once it
 * has answered, the cost is incurred and must be recorded, so everything a
 * request will be charged to is checked first with the producer's own rules
 * (contract/ids.ts): its end user and tags, its key's owners as PostgreSQL
 * holds them (rows other tooling may have written), and the bound on every
 * daily row key it makes. What does not change per request is worked out
 * once: per priced model, and per key looked up.
 */
export class ChargeCheck {
  /**
   * Per model name and endpoint: the most bytes its daily rows add to their
   * key besides the api key (over the name's deployments: any may answer).
   */
  private readonly modelBytes = new Map<string, number>();
  private readonly owners = new WeakMap<
    KeyInfo,
    { charged: ChargedContext; problem?: SpendEventError }
  >();

  constructor(private readonly config: AppConfig) {
    for (const d of allDeployments(config))
      for (const endpoint of ENDPOINTS) {
        const k = bytesKey(d.name, endpoint);
        const bytes = dailyContextBytes("", d.model, d.name, d.provider, "", endpoint);
        this.modelBytes.set(k, Math.max(this.modelBytes.get(k) ?? 0, bytes));
      }
  }

  /**
   * Why the key's owners cannot be charged (a SpendEventError), or undefined.
   * Decided once per key object: the key cache hands out the same one until
   * it reloads the key.
   */
  keyProblem(key: KeyInfo): SpendEventError | undefined {
    return this.ownersOf(key).problem;
  }

  /** Throws the SpendEventError the producer would: nothing this request is charged to may be refused later. */
  check(
    key: KeyInfo,
    model: string,
    endpoint: ChargedEndpoint,
    endUserId: unknown,
    tags: unknown,
  ): void {
    const owners = this.ownersOf(key).charged;
    checkEndUserAndTags(endUserId, tags, this.config.limits, {
      ...owners,
      contextBytes: owners.contextBytes + (this.modelBytes.get(bytesKey(model, endpoint)) ?? 0),
    });
  }

  private ownersOf(key: KeyInfo): { charged: ChargedContext; problem?: SpendEventError } {
    let o = this.owners.get(key);
    if (o === undefined) {
      o = {
        charged: {
          contextBytes: dailyContextBytes(key.token, "", "", "", "", ""),
          userId: key.userId ?? "",
          teamId: key.teamId ?? "",
          organizationId: key.organizationId ?? "",
        },
      };
      try {
        validateSpendEvent(
          {
            spend: 0,
            apiKey: key.token,
            userId: key.userId ?? null,
            teamId: key.teamId ?? null,
            organizationId: key.organizationId ?? null,
          },
          this.config.limits,
        );
      } catch (err) {
        if (!(err instanceof SpendEventError)) throw err;
        o.problem = err;
      }
      this.owners.set(key, o);
    }
    return o;
  }
}

function bytesKey(model: string, endpoint: string): string {
  return `${endpoint}\u0000${model}`;
}

function* allDeployments(config: AppConfig): Iterable<ModelDeployment> {
  for (const list of config.gateway.models.values()) yield* list;
}

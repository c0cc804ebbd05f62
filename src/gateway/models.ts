import type { ModelDeployment } from "../config/config.js";

/**
 * The models clients may ask for: the mock models of model_prices and the
 * deployments of model_list. A name with several deployments hands its
 * requests to each in turn (LiteLLM's simplest routing), so one upstream's
 * quota or outage is not all of the name's.
 */
export class ModelCatalog {
  private readonly turn = new Map<string, number>();

  constructor(private readonly models: ReadonlyMap<string, readonly ModelDeployment[]>) {}

  has(name: string): boolean {
    return this.models.has(name);
  }

  /** The deployment to answer this request with (undefined: no such model). */
  pick(name: string): ModelDeployment | undefined {
    const list = this.models.get(name);
    if (list === undefined || list.length === 0) return undefined;
    if (list.length === 1) return list[0];
    const n = this.turn.get(name) ?? 0;
    this.turn.set(name, (n + 1) % list.length);
    return list[n % list.length];
  }

  /** Every model name, in configuration order. */
  names(): string[] {
    return [...this.models.keys()];
  }

  /** Every deployment of every name. */
  *deployments(): Iterable<ModelDeployment> {
    for (const list of this.models.values()) yield* list;
  }

  /** The provider a name is listed under (/v1/models' owned_by): its first deployment's. */
  ownerOf(name: string): string {
    return this.models.get(name)?.[0]?.provider ?? "unknown";
  }
}

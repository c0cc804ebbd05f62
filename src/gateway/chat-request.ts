import { z } from "zod";
import type { ChatMessage } from "./mock-model.js";

/** What the gateway takes of an OpenAI chat completion request. */
export interface ChatRequest {
  model: string;
  messages: ChatMessage[];
  user?: string;
  tags?: string[];
  maxTokens?: number;
  stream: boolean;
  /** stream_options.include_usage: the client wants the usage chunk at the end of a stream. */
  includeUsage: boolean;
  /** The body as sent, for an upstream: every OpenAI field the gateway does not read goes on. */
  body: Record<string, unknown>;
}

/** OpenAI message content: a string, or parts of which the text parts count. */
const content = z.union([
  z.string(),
  z.null(),
  z.array(
    z
      .looseObject({ type: z.string() })
      .refine(
        (p) => p.type !== "text" || typeof (p as { text?: unknown }).text === "string",
        'a text part needs a string "text"',
      ),
  ),
]);

// Loose: OpenAI requests carry many fields (temperature, tools, ...) the mock
// model ignores; refusing them would refuse ordinary clients.
const chatRequestSchema = z.looseObject({
  model: z.string().min(1, "model must not be empty"),
  messages: z
    .array(z.looseObject({ role: z.string(), content: content.optional() }))
    .min(1, "messages must be a non-empty array"),
  stream: z.boolean().nullish(),
  stream_options: z.looseObject({ include_usage: z.boolean().nullish() }).nullish(),
  user: z.string().nullish(),
  metadata: z.looseObject({ tags: z.array(z.string()).nullish() }).nullish(),
  max_tokens: z.number().int().min(1, "max_tokens must be a positive integer").nullish(),
  max_completion_tokens: z.number().int().min(1, "max_tokens must be a positive integer").nullish(),
});

function text(c: z.infer<typeof content> | undefined): string {
  if (typeof c === "string") return c;
  if (c === null || c === undefined) return "";
  return c
    .filter((p) => p.type === "text")
    .map((p) => (p as unknown as { text: string }).text)
    .join(" ");
}

/** The request, or the first thing wrong with it (a sentence naming the field). */
export function parseChatRequest(
  body: unknown,
): { ok: true; request: ChatRequest } | { ok: false; message: string } {
  if (typeof body !== "object" || body === null || Array.isArray(body))
    return { ok: false, message: "the body must be a JSON object" };
  const r = chatRequestSchema.safeParse(body);
  if (!r.success) {
    const issue = r.error.issues[0];
    const path = issue?.path.map(String).join(".") ?? "";
    return {
      ok: false,
      message: `${path !== "" ? `${path}: ` : ""}${issue?.message ?? "invalid"}`,
    };
  }
  const b = r.data;
  const maxTokens = b.max_tokens ?? b.max_completion_tokens ?? undefined;
  const tags = b.metadata?.tags ?? undefined;
  return {
    ok: true,
    request: {
      model: b.model,
      messages: b.messages.map((m) => ({ role: m.role, content: text(m.content) })),
      ...(b.user !== undefined && b.user !== null && b.user !== "" ? { user: b.user } : {}),
      ...(tags !== undefined ? { tags } : {}),
      ...(maxTokens !== undefined ? { maxTokens } : {}),
      stream: b.stream === true,
      includeUsage: b.stream === true && b.stream_options?.include_usage === true,
      body: body as Record<string, unknown>,
    },
  };
}

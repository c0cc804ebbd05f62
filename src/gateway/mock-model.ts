/**
 * The built-in model the gateway answers with: deterministic, no network.
 * The completion is the last user message's words in reverse order (at most
 * max_tokens of them); tokens are counted as whitespace-separated words, so a
 * test knows every request's usage, and therefore its cost, in advance.
 *
 * A model whose name starts with `mock-fail` fails after reading the prompt:
 * the gateway answers 500 and still records spend for the prompt tokens, with
 * success: false, the way a provider bills a request that errored.
 */

export interface ChatMessage {
  role: string;
  content: string;
}

export interface MockResult {
  ok: boolean;
  text: string;
  promptTokens: number;
  completionTokens: number;
}

export function countWords(text: string): number {
  const t = text.trim();
  return t === "" ? 0 : t.split(/\s+/).length;
}

export function isFailingModel(model: string): boolean {
  return model.startsWith("mock-fail");
}

export function runMockModel(
  model: string,
  messages: readonly ChatMessage[],
  maxTokens?: number,
): MockResult {
  let promptTokens = 0;
  for (const m of messages) promptTokens += countWords(m.content);
  if (isFailingModel(model)) return { ok: false, text: "", promptTokens, completionTokens: 0 };
  const lastUser = [...messages].reverse().find((m) => m.role === "user");
  const words = (lastUser?.content ?? "").trim().split(/\s+/).filter(Boolean).reverse();
  const kept = maxTokens !== undefined ? words.slice(0, maxTokens) : words;
  const text = kept.length > 0 ? kept.join(" ") : "(empty)";
  return { ok: true, text, promptTokens, completionTokens: countWords(text) };
}

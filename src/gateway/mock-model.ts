import { createHash } from "node:crypto";

/**
 * The built-in model the gateway answers with: deterministic, no network.
 * The completion is the last user message's words in reverse order (at most
 * max_tokens of them); tokens are counted as whitespace-separated words, so a
 * test knows every request's usage, and therefore its cost, in advance.
 *
 * - A model whose name starts with `mock-fail` fails after reading the
 *   prompt: the gateway answers 500 and records a failed request with the
 *   cost a provider reports for an error, zero (retries cost nothing).
 * - One whose name starts with `mock-slow` streams a word every
 *   MOCK_SLOW_WORD_MS, so a client can go away mid-stream (and is charged for
 *   the words it was sent).
 * - Embeddings: a vector of the requested dimensions (16 by default) drawn
 *   from the input's SHA-256; the input's words are its tokens.
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

export const MOCK_SLOW_WORD_MS = 25;

export function countWords(text: string): number {
  const t = text.trim();
  return t === "" ? 0 : t.split(/\s+/).length;
}

export function isFailingModel(model: string): boolean {
  return model.startsWith("mock-fail");
}

export function isSlowModel(model: string): boolean {
  return model.startsWith("mock-slow");
}

export function mockPromptTokens(messages: readonly ChatMessage[]): number {
  let promptTokens = 0;
  for (const m of messages) promptTokens += countWords(m.content);
  return promptTokens;
}

export function runMockModel(
  model: string,
  messages: readonly ChatMessage[],
  maxTokens?: number,
): MockResult {
  const promptTokens = mockPromptTokens(messages);
  if (isFailingModel(model)) return { ok: false, text: "", promptTokens, completionTokens: 0 };
  const lastUser = [...messages].reverse().find((m) => m.role === "user");
  const words = (lastUser?.content ?? "").trim().split(/\s+/).filter(Boolean).reverse();
  const kept = maxTokens !== undefined ? words.slice(0, maxTokens) : words;
  const text = kept.length > 0 ? kept.join(" ") : "(empty)";
  return { ok: true, text, promptTokens, completionTokens: countWords(text) };
}

/** The pieces a streamed completion is sent in: one word (one token) each, spaces kept. */
export function streamPieces(text: string): string[] {
  return text.split(" ").map((w, i) => (i === 0 ? w : ` ${w}`));
}

/** A deterministic unit-length-ish embedding of `text`. */
export function mockEmbedding(text: string, dimensions = 16): number[] {
  const out: number[] = [];
  let block = createHash("sha256").update(text).digest();
  for (let i = 0; i < dimensions; i++) {
    if (i > 0 && i % 16 === 0) block = createHash("sha256").update(block).digest();
    // Two bytes per dimension, mapped to [-1, 1): float32-exact values.
    const v = block.readUInt16BE((i % 16) * 2);
    out.push((v - 32768) / 32768);
  }
  return out;
}

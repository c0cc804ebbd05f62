import type { ChatMessage } from "./mock-model.js";

/**
 * Counts tokens the way OpenAI's models do (o200k_base), for when a request
 * must be charged and the upstream never said its usage: the client went away
 * mid-stream, the upstream broke off, or it answered without a usage block.
 * The tokenizer (a few MB of tables) is loaded on first use, not at start.
 */
let tokenizer: Promise<{ countTokens: (text: string) => number }> | undefined;

function load(): Promise<{ countTokens: (text: string) => number }> {
  tokenizer ??= import("gpt-tokenizer");
  return tokenizer;
}

/** Tokens of a completion's text. */
export async function countTextTokens(text: string): Promise<number> {
  if (text === "") return 0;
  return (await load()).countTokens(text);
}

/**
 * Tokens of a chat prompt: each message's content, plus OpenAI's framing of
 * 3 tokens per message and 3 to prime the reply (its documented estimate).
 */
export async function countPromptTokens(messages: readonly ChatMessage[]): Promise<number> {
  const { countTokens } = await load();
  let n = 3;
  for (const m of messages) n += 3 + (m.content === "" ? 0 : countTokens(m.content));
  return n;
}

import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";

/**
 * An OpenAI-compatible upstream on loopback, for the gateway's pass-through
 * tests. What it does is chosen by the model it is asked for:
 * - `echo`: the last user message's words reversed; usage = (words of every
 *   message + 7, words of the reply). Streams a word per chunk, and the usage
 *   chunk only when stream_options.include_usage is set, as OpenAI does.
 * - `slow`: as echo, a word every 40 ms (a client can leave mid-stream).
 * - `nousage`: as echo, but never reports usage.
 * - `broken`: streams two words, then drops the connection.
 * - `fail`: 500 with an OpenAI error body; `ratelimit`: 429, Retry-After 7.
 * - `hang`: never answers.
 * - `nullbody`: 200 with the body `null`; `badchoices`: 200 with `choices`
 *   an object (both, for chat and embeddings: a broken upstream).
 * - `leakkey`: 401 whose error message quotes the Authorization header it got.
 * - embeddings: a 3-dimension vector per input; usage = words of the inputs + 1.
 * Every request's body and authorization header is kept in `requests`.
 */
export interface FakeUpstream {
  url: string;
  requests: { path: string; auth: string | undefined; body: Record<string, unknown> }[];
  close(): Promise<void>;
}

const words = (s: string): string[] => s.trim().split(/\s+/).filter(Boolean);

export function echoUsage(messages: { content: string }[]): { prompt: number; reply: string[] } {
  let prompt = 7;
  for (const m of messages) prompt += words(m.content).length;
  const last = messages[messages.length - 1]?.content ?? "";
  return { prompt, reply: words(last).reverse() };
}

async function readBody(req: IncomingMessage): Promise<Record<string, unknown>> {
  let text = "";
  for await (const chunk of req) text += (chunk as Buffer).toString();
  return JSON.parse(text) as Record<string, unknown>;
}

export async function startFakeUpstream(): Promise<FakeUpstream> {
  const requests: FakeUpstream["requests"] = [];
  const sockets = new Set<import("node:net").Socket>();
  const server: Server = createServer((req, res) => {
    void handle(req, res).catch(() => res.destroy());
  });
  server.on("connection", (s) => {
    sockets.add(s);
    s.on("close", () => sockets.delete(s));
  });

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const body = await readBody(req);
    const path = req.url ?? "";
    requests.push({ path, auth: req.headers.authorization, body });
    const model = String(body.model);
    const json = (status: number, o: unknown, headers: Record<string, string> = {}): void => {
      res.writeHead(status, { "content-type": "application/json", ...headers });
      res.end(JSON.stringify(o));
    };
    if (model === "hang") return;
    if (model === "fail")
      return json(500, {
        error: { message: "upstream exploded", type: "server_error", param: null, code: null },
      });
    if (model === "ratelimit")
      return json(
        429,
        {
          error: {
            message: "slow down",
            type: "requests",
            param: null,
            code: "rate_limit_exceeded",
          },
        },
        { "retry-after": "7" },
      );
    if (model === "nullbody") return json(200, null);
    if (model === "badchoices")
      return json(200, { choices: { a: 1 }, usage: { prompt_tokens: 3 } });
    if (model === "leakkey")
      return json(401, {
        error: {
          message: `Incorrect API key provided: ${req.headers.authorization ?? ""}`,
          type: "invalid_request_error",
          param: null,
          code: "invalid_api_key",
        },
      });
    if (path === "/v1/embeddings") {
      const input = body.input;
      const inputs = typeof input === "string" ? [input] : (input as string[]);
      const tokens = inputs.reduce((n, i) => n + words(i).length, 1);
      return json(200, {
        object: "list",
        data: inputs.map((_, index) => ({
          object: "embedding",
          index,
          embedding: [0.5, -0.25, 1],
        })),
        model,
        usage: { prompt_tokens: tokens, total_tokens: tokens },
      });
    }
    const messages = body.messages as { content: string }[];
    const { prompt, reply } = echoUsage(messages);
    const usage = {
      prompt_tokens: prompt,
      completion_tokens: reply.length,
      total_tokens: prompt + reply.length,
    };
    const base = { id: "chatcmpl-fake", created: 1_700_000_000, model: `${model}-2024` };
    if (body.stream !== true)
      return json(200, {
        ...base,
        object: "chat.completion",
        choices: [
          {
            index: 0,
            message: { role: "assistant", content: reply.join(" ") },
            finish_reason: "stop",
          },
        ],
        ...(model === "nousage" ? {} : { usage }),
      });
    res.writeHead(200, { "content-type": "text/event-stream" });
    const includeUsage =
      (body.stream_options as { include_usage?: boolean } | undefined)?.include_usage === true &&
      model !== "nousage";
    const send = (o: unknown): void => void res.write(`data: ${JSON.stringify(o)}\n\n`);
    const chunk = (delta: unknown, finish: string | null): unknown => ({
      ...base,
      object: "chat.completion.chunk",
      choices: [{ index: 0, delta, finish_reason: finish }],
      ...(includeUsage ? { usage: null } : {}),
    });
    send(chunk({ role: "assistant", content: "" }, null));
    for (const [i, w] of reply.entries()) {
      if (model === "broken" && i === 2) {
        // Let what was written reach the gateway, then drop the connection.
        await new Promise((r) => setTimeout(r, 50));
        return void res.socket?.destroy();
      }
      if (model === "slow") await new Promise((r) => setTimeout(r, 40));
      if (res.destroyed) return;
      send(chunk({ content: i === 0 ? w : ` ${w}` }, null));
    }
    send(chunk({}, "stop"));
    if (includeUsage) send({ ...base, object: "chat.completion.chunk", choices: [], usage });
    res.end("data: [DONE]\n\n");
  }

  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}/v1`,
    requests,
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}

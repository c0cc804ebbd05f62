import type { Response } from "express";

/**
 * Server-sent events as OpenAI streams them: `data: <json>\n\n` per chunk,
 * then `data: [DONE]\n\n`. No event names, no ids, no comments.
 */

/** Starts an event stream on an express response. */
export function startEventStream(res: Response): void {
  res.status(200);
  res.set({
    "content-type": "text/event-stream; charset=utf-8",
    "cache-control": "no-cache",
    connection: "keep-alive",
    // Proxies (nginx) must pass each chunk on as it comes.
    "x-accel-buffering": "no",
  });
  res.flushHeaders();
}

/** Writes one event; resolves when the socket takes it (back-pressure from a slow client). */
export function writeEvent(res: Response, data: unknown): Promise<void> {
  const line = `data: ${typeof data === "string" ? data : JSON.stringify(data)}\n\n`;
  return new Promise((resolve) => {
    if (res.writableEnded || res.destroyed) return resolve();
    if (res.write(line)) resolve();
    else {
      const done = (): void => {
        res.off("drain", done);
        res.off("close", done);
        resolve();
      };
      res.once("drain", done);
      res.once("close", done);
    }
  });
}

/**
 * Reads an upstream's event stream: yields each `data:` payload (joined when
 * an event spans several lines), `[DONE]` included. Other fields are skipped.
 */
export async function* readEvents(body: ReadableStream<Uint8Array>): AsyncGenerator<string> {
  const decoder = new TextDecoder();
  let buffer = "";
  let data: string[] = [];
  for await (const chunk of body) {
    buffer += decoder.decode(chunk, { stream: true });
    for (;;) {
      const nl = buffer.indexOf("\n");
      if (nl === -1) break;
      const line = buffer.slice(0, nl).replace(/\r$/, "");
      buffer = buffer.slice(nl + 1);
      if (line === "") {
        if (data.length > 0) yield data.join("\n");
        data = [];
      } else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
    }
  }
  if (data.length > 0) yield data.join("\n");
}

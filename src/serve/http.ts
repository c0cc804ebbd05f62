import express, { type Express } from "express";
import type { Server } from "node:http";
import { StartupError } from "../config/startup-error.js";
import type { SpendMetrics } from "../observe/metrics.js";

/**
 * The HTTP surface every process serves: Prometheus metrics and liveness.
 * Kept framework-thin so the gateway and the worker can mount more on it.
 */
export function createApp(metrics: SpendMetrics): Express {
  const app = express();
  app.disable("x-powered-by");
  app.get("/metrics", async (_req, res) => {
    try {
      res.set("Content-Type", metrics.registry.contentType);
      res.send(await metrics.registry.metrics());
    } catch (err) {
      res
        .status(500)
        .type("text/plain")
        .send(`metrics collection failed: ${(err as Error).message}`);
    }
  });
  app.get("/health/liveliness", (_req, res) => {
    res.json({ status: "ok" });
  });
  return app;
}

/**
 * Listens on `host:port`. Failing to bind is the environment's fault, not a
 * crash: a StartupError saying which port and why (the CLI exits 2 with it).
 */
export function listen(app: Express, port: number, host = "0.0.0.0"): Promise<Server> {
  return new Promise((resolve, reject) => {
    // Express 5 hands a listen error to this callback as well: resolving on it would
    // return a server that is not listening.
    const server = app.listen(port, host, (err?: Error) => {
      if (err === undefined) resolve(server);
      else reject(listenError(err, port, host));
    });
  });
}

function listenError(err: NodeJS.ErrnoException, port: number, host: string): Error {
  const on = host === "0.0.0.0" || host === "::" ? "" : ` on ${host}`;
  switch (err.code) {
    case "EADDRINUSE":
      return new StartupError(`port ${port} is already in use${on}`);
    case "EACCES":
      return new StartupError(`cannot listen on port ${port}${on}: permission denied`);
    case "EADDRNOTAVAIL":
      return new StartupError(`cannot listen on ${host}: no such address on this machine`);
    case "ENOTFOUND":
    case "EAI_AGAIN":
      return new StartupError(`cannot listen on ${host}: the host name does not resolve`);
    default:
      return err;
  }
}

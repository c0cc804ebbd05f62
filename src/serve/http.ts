import express, { type Express } from "express";
import type { Server } from "node:http";
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

export function listen(app: Express, port: number, host = "0.0.0.0"): Promise<Server> {
  return new Promise((resolve, reject) => {
    const server = app.listen(port, host, () => resolve(server));
    server.once("error", reject);
  });
}

import { createBullBoard } from "@bull-board/api";
import { BullMQAdapter } from "@bull-board/api/bullMQAdapter";
import { ExpressAdapter } from "@bull-board/express";
import type { Queue } from "bullmq";
import type { Express } from "express";
import type { AdminConfig } from "../config/config.js";
import { adminAuth } from "./admin-auth.js";
import { boardJobData } from "./board-job-view.js";

export const BULL_BOARD_PATH = "/admin/queues";

export interface BoardQueue {
  queue: Queue;
  /** What an operator reads in the board. */
  description: string;
}

/**
 * Mounts Bull Board at /admin/queues behind admin authentication (basic or
 * bearer; off only with admin_auth: false). Read-only unless
 * bull_board_read_only: false: the board is for looking; retrying or
 * removing spend jobs by hand is not an operation this system expects.
 */
export function mountBullBoard(
  app: Express,
  queues: readonly BoardQueue[],
  admin: AdminConfig,
  opts: { masterKey?: string; basePath?: string } = {},
): void {
  const basePath = opts.basePath ?? BULL_BOARD_PATH;
  const serverAdapter = new ExpressAdapter();
  serverAdapter.setBasePath(basePath);
  createBullBoard({
    queues: queues.map(({ queue, description }) => {
      const adapter = new BullMQAdapter(queue, { readOnlyMode: admin.readOnly, description });
      // Format 3 jobs carry their rows as one text: shown decoded (board-job-view.ts).
      adapter.setFormatter("data", boardJobData);
      return adapter;
    }),
    serverAdapter,
    options: { uiConfig: { boardTitle: "Spend buffer" } },
  });
  app.use(
    basePath,
    adminAuth(admin, opts.masterKey !== undefined ? { masterKey: opts.masterKey } : {}),
    serverAdapter.getRouter() as Express,
  );
}

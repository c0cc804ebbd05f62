#!/usr/bin/env node
/**
 * The operators' CLI: `haimaker-spend <gateway|worker|migrate|key create|status|dead-letter> --config proxy_config.yaml`.
 * Installed, `haimaker-spend` runs this file compiled (dist/cli/main.js) with plain node;
 * in a checkout, `npm run build` makes it, and `tsx src/cli/main.ts` runs the source.
 */
import { buildProgram } from "./program.js";

await buildProgram().parseAsync(process.argv);

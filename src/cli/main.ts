/**
 * The operators' CLI: `haimaker-spend <gateway|worker|migrate|key create|status> --config proxy_config.yaml`.
 * Run it with `npx haimaker-spend` (bin shim: src/cli/bin.js) or `tsx src/cli/main.ts`.
 */
import { buildProgram } from "./program.js";

await buildProgram().parseAsync(process.argv);

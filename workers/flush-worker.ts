/**
 * The flush worker deployment's entry point: `haimaker-spend worker`, the
 * same command, start-up checks and exit codes (2 and one line for a bad
 * configuration or an unreachable dependency). Config: --config path or
 * SPEND_CONFIG (YAML), REDIS_URL, DATABASE_URL, METRICS_PORT; see README.
 */
import { buildProgram } from "../src/cli/program.js";

await buildProgram().parseAsync([...process.argv.slice(0, 2), "worker", ...process.argv.slice(2)]);

/**
 * Section 1's in-process measurements, in a process pinned to one core
 * (bench/pinned.ts). Reads its plan from BENCH_PRODUCER_PLAN, prints the
 * result as its last stdout line.
 */
import type { TrafficShape } from "../src/demo/traffic.js";
import type { ProducerPlan } from "./plan.js";
import { measureProducerCost } from "./producer-cost.js";

const { plan, shape } = JSON.parse(process.env.BENCH_PRODUCER_PLAN ?? "null") as {
  plan: ProducerPlan;
  shape: TrafficShape;
};
const result = await measureProducerCost(plan, shape);
process.stdout.write(`${JSON.stringify(result)}\n`);
// The IPC channel bench/pinned.ts opens is not used here; let the process end.
process.disconnect?.();

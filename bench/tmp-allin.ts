import { trafficGenerator } from "../src/demo/traffic.js";
import { SpendProducer } from "../src/produce/producer.js";
import type { SealedBatch, SpendSink } from "../src/contract/spend-sink.js";
import { jobPayload } from "../src/queue/queue-sink.js";
import { DEFAULT_CONFIG } from "../src/config/config.js";
import { BENCH_SHAPE } from "./plan.js";
let bytes = 0, rows = 0;
const sink: SpendSink = { async write(b: SealedBatch) { bytes += JSON.stringify(jobPayload(b, DEFAULT_CONFIG.producer.jobFormat)).length; rows += b.rowCount; }, close: async () => {} };
const now = Date.now();
const gen = trafficGenerator(500, BENCH_SHAPE, () => now);
const n = 100_000, every = 2_000;
const events = Array.from({ length: n }, gen);
const p = new SpendProducer({ sink, flushIntervalMs: 3_600_000, flushJitterMs: 0, maxBufferedRows: 1e9 });
let rec = 0;
async function loop() { for (let i = 0; i < n; i += every) { const c0 = process.cpuUsage(); for (let j = i; j < i + every; j++) p.record(events[j]!); const c = process.cpuUsage(c0); rec += c.user + c.system; await p.flush(); } }
for (let i = 0; i < 2; i++) await loop();
const res: number[] = [];
for (let r = 0; r < 7; r++) { rec = 0; const c0 = process.cpuUsage(); bytes = 0; rows = 0; await loop(); const c = process.cpuUsage(c0); res.push((c.user + c.system) * 1000 / n); console.log("record share", (rec/(c.user+c.system)).toFixed(2)); }
res.sort((a, b) => a - b);
console.log(`cpu ns/event median ${res[3]!.toFixed(0)} all ${res.map((x) => x.toFixed(0)).join(" ")}; rows/event ${(rows / n).toFixed(2)} bytes/event ${(bytes / n).toFixed(0)}`);
await p.close();

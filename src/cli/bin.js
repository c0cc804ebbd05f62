#!/usr/bin/env node
// The `haimaker-spend` bin: runs the TypeScript CLI (src/cli/main.ts) through tsx,
// the same way every process of this project runs.
import { register } from "tsx/esm/api";

register();
await import("./main.ts");

// `npm run docs:config`: writes docs/configuration.md from the configuration schema.
import { writeFileSync } from "node:fs";
import { renderConfigReference } from "../src/config/config-reference.js";

writeFileSync(new URL("../docs/configuration.md", import.meta.url), renderConfigReference());
process.stderr.write("docs/configuration.md written\n");

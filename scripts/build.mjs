// `npm run build`: compiles src/ to dist/ and copies what the code reads at
// run time beside its modules (the Lua scripts). The migrations and the
// Prisma schema stay in prisma/, which the package ships as it is: the code
// finds them two folders above its own modules, in dist/ as in src/.
import { execFileSync } from "node:child_process";
import { cpSync, existsSync, readdirSync, rmSync, statSync } from "node:fs";
import { dirname, join, relative } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const src = join(root, "src");
const dist = join(root, "dist");

// The Prisma client is generated into src/ (npm run generate), not checked in:
// without it tsc fails on every file that imports it, with no word of why.
if (!existsSync(join(src, "generated", "prisma", "client.ts"))) {
  process.stderr.write("[build] no Prisma client in src/generated: running npm run generate\n");
  execFileSync("npm", ["run", "generate"], { cwd: root, stdio: "inherit" });
}

rmSync(dist, { recursive: true, force: true });
execFileSync(
  process.execPath,
  [join(root, "node_modules/typescript/bin/tsc"), "-p", "tsconfig.build.json"],
  {
    cwd: root,
    stdio: "inherit",
  },
);

let copied = 0;
const walk = (dir) => {
  for (const name of readdirSync(dir)) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) walk(p);
    else if (name.endsWith(".lua")) {
      cpSync(p, join(dist, relative(src, p)));
      copied++;
    }
  }
};
walk(src);
process.stderr.write(`[build] dist/ compiled, ${copied} Lua script(s) copied\n`);

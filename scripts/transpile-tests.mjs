// Transpiles the TypeScript of src/, test/ and bench/ to JavaScript in
// .build/ (esbuild: types stripped, nothing checked: `npm run typecheck`
// checks them), so the test processes and the processes they start run on
// plain node instead of loading a TypeScript loader each. The layout is the
// repository's, and what the code finds beside it at run time (Lua scripts;
// the migrations, deploy/ and the package build two folders up) is linked in.
import { cpSync, mkdirSync, readdirSync, rmSync, statSync, symlinkSync } from "node:fs";
import { dirname, join, relative } from "node:path";
import { fileURLToPath } from "node:url";
import { build } from "esbuild";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const out = join(root, ".build");
rmSync(out, { recursive: true, force: true });

const entries = [];
const assets = [];
const walk = (dir) => {
  for (const name of readdirSync(dir)) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) walk(p);
    else if (name.endsWith(".ts") && !name.endsWith(".d.ts")) entries.push(p);
    else if (name.endsWith(".lua")) assets.push(p);
  }
};
for (const d of ["src", "test", "bench", "workers"]) walk(join(root, d));

await build({
  entryPoints: entries,
  outdir: out,
  outbase: root,
  format: "esm",
  platform: "node",
  target: "node20",
  sourcemap: "inline",
  logLevel: "warning",
});
for (const a of assets) {
  const to = join(out, relative(root, a));
  mkdirSync(dirname(to), { recursive: true });
  cpSync(a, to);
}
for (const name of ["prisma", "deploy", "dist"]) symlinkSync(join(root, name), join(out, name));
process.stderr.write(`[test] transpiled ${entries.length} files to .build/\n`);

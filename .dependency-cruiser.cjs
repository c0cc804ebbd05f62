/**
 * The layer order of src/, enforced by `npm run lint` (dependency-cruiser).
 *
 * From the ground up: each folder may import its own files and any folder on
 * a lower layer, never one on its own layer or above. So spend flows down a
 * path of folders that never reach back: a gateway's producer (produce)
 * hands sealed batches to a sink (queue, or persist when the buffer is off);
 * the flush worker (flush) takes them from the queues under a lock (lock)
 * and writes them (persist); serve and the apps on top wire it all.
 * contract/ is what the parts agree on (the wire format, money, ids): it
 * imports nothing of the project.
 */
const LAYERS = [
  ["contract", "generated"],
  ["config"],
  ["observe"],
  ["redis"],
  ["produce"],
  ["queue", "lock"],
  ["persist"],
  ["budget"],
  ["flush"],
  ["serve"],
  ["wiring"],
  ["gateway", "demo"],
  ["cli"],
];

const folder = (name) => `^src/${name}/`;
const forbidden = [
  {
    name: "no-circular",
    comment: "Files that import each other in a loop cannot be understood or tested one at a time.",
    severity: "error",
    from: {},
    to: { circular: true },
  },
];
LAYERS.forEach((layer, i) => {
  const above = LAYERS.slice(i + 1).flat();
  for (const name of layer) {
    const peers = layer.filter((p) => p !== name);
    const banned = [...peers, ...above];
    if (banned.length === 0) continue;
    forbidden.push({
      name: `layer-${name}`,
      comment: `src/${name}/ is on layer ${i}: it may import only lower layers (see LAYERS).`,
      severity: "error",
      from: { path: folder(name) },
      to: { path: `^src/(${banned.join("|")})/` },
    });
  }
});
forbidden.push({
  name: "no-entry-point-inside",
  comment: "src/index.ts is the package's face: nothing inside the package imports it.",
  severity: "error",
  from: { path: "^src/", pathNot: "^src/index\\.ts$" },
  to: { path: "^src/index\\.ts$" },
});

module.exports = {
  forbidden,
  options: {
    doNotFollow: { path: "node_modules" },
    exclude: { path: "^src/generated/" },
    tsPreCompilationDeps: true,
    tsConfig: { fileName: "tsconfig.json" },
    enhancedResolveOptions: { extensions: [".ts", ".js"] },
  },
};

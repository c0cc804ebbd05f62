import { LuaScript } from "../redis/lua.js";

const dir = new URL("./scripts/", import.meta.url);

export const budgetScripts = {
  lease: LuaScript.load("lease-1", dir),
  seed: LuaScript.load("seed-1", dir),
  giveBack: LuaScript.load("give-back-1", dir),
  report: LuaScript.load("report-1", dir),
};

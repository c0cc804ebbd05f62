import { LuaScript } from "../redis/lua.js";

const dir = new URL("./scripts/", import.meta.url);

export const lockScripts = {
  acquire: LuaScript.load("acquire-2", dir),
  takeOver: LuaScript.load("take-over-2", dir),
  extend: LuaScript.load("extend-1", dir),
  release: LuaScript.load("release-1", dir),
  raiseFence: LuaScript.load("raise-fence-1", dir),
  lead: LuaScript.load("lead-1", dir),
};

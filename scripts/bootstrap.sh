#!/usr/bin/env bash
# Everything the project needs before it runs, done only where missing:
# dependencies, the generated Prisma client, local services, migrations.
# Called by `npm start` and `npm test` (with --browser: the tests also need
# chromium and promtool), so both work on a fresh clone.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x node_modules/.bin/tsx ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  echo "[bootstrap] installing dependencies (npm ci)" >&2
  npm ci --no-audit --no-fund --loglevel=error
fi
if [ ! -f src/generated/prisma/client.ts ] || [ prisma/schema.prisma -nt src/generated/prisma/client.ts ]; then
  echo "[bootstrap] generating the Prisma client" >&2
  PRISMA_SCHEMA_ENGINE_BINARY=./scripts/no-schema-engine.sh npx prisma generate >/dev/null
fi
# The build (dist/), when any source is newer: the tests run the CLI as it ships.
if [ "${1:-}" = "--browser" ] || [ "${1:-}" = "--build" ]; then
  if [ ! -f dist/cli/main.js ] || [ -n "$(find src prisma/schema.prisma -newer dist/cli/main.js -print -quit)" ]; then
    echo "[bootstrap] building dist/ (npm run build)" >&2
    npm run --silent build
  fi
fi
bash scripts/services.sh "$@"
npx tsx src/persist/migrate-cli.ts deploy >&2

#!/bin/sh
# Stands in for Prisma's native schema engine, which cannot be downloaded on
# machines that reach only the npm registry. `prisma generate` needs a file to
# exist here; anything that really needs the engine fails loudly instead of
# silently doing nothing. Migrations run through src/persist/migrate.ts.
echo "native Prisma schema engine not available: use 'npm run migrate'" >&2
exit 1

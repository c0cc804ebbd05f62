// Offline stand-in for the Prisma CLI's migrate commands (see migrate.ts):
//   tsx src/persist/migrate-cli.ts deploy      apply pending migrations to DATABASE_URL
//   tsx src/persist/migrate-cli.ts diff-init   print the initial migration's SQL
//
// The process exits explicitly. migrate.ts already leaves nothing running (the
// engine's free() neither closes its pg pool nor cancels its 10 s advisory-lock
// timer, and either would hold the process for 10 s; migrate.ts deals with both),
// but a CLI run by CI must never hang on a handle something else left behind,
// and must report failure through its exit code.

import { createInitialMigrationSql, DEFAULT_DATABASE_URL, migrate } from "./migrate.js";

const USAGE = "usage: tsx src/persist/migrate-cli.ts <deploy|diff-init>";

async function main(argv: readonly string[]): Promise<number> {
  const databaseUrl = process.env["DATABASE_URL"] ?? DEFAULT_DATABASE_URL;
  const log = (msg: string): void => {
    console.error(msg);
  };
  switch (argv[0]) {
    case "deploy": {
      const { applied } = await migrate({ databaseUrl, log });
      console.log(
        applied.length === 0
          ? "No pending migrations to apply."
          : `Applied ${applied.length} migration(s).`,
      );
      return 0;
    }
    case "diff-init": {
      const sql = await createInitialMigrationSql(undefined, { databaseUrl, log });
      await writeStdout(sql);
      return 0;
    }
    default:
      console.error(USAGE);
      return 1;
  }
}

// Large output to a pipe must be flushed before process.exit() cuts it off.
function writeStdout(text: string): Promise<void> {
  return new Promise((resolve, reject) => {
    process.stdout.write(text, (error) => {
      if (error) reject(error);
      else resolve();
    });
  });
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (error: unknown) => {
    console.error(error instanceof Error ? `${error.name}: ${error.message}` : error);
    process.exit(1);
  },
);

// Prisma 7 reads the datasource URL from here, not from schema.prisma.
// Migrations do not go through the Prisma CLI on machines without its native
// engine: see src/persist/migrate.ts.
import { defineConfig } from "prisma/config";

export default defineConfig({
  schema: "prisma/schema.prisma",
  migrations: { path: "prisma/migrations" },
  datasource: {
    url: process.env.DATABASE_URL ?? "postgresql://postgres@127.0.0.1:5432/test",
  },
});

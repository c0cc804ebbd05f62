# One image for every role (migrate, flush worker, gateway): the command decides.
# Built in two stages: the first compiles (TypeScript, the Prisma client), the
# second runs plain node on the build with production dependencies only.
FROM node:20-bookworm-slim AS build
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY . .
# The native schema engine is never needed: migrations run through the Wasm engine.
RUN PRISMA_SCHEMA_ENGINE_BINARY=./scripts/no-schema-engine.sh npx prisma generate \
 && npm run build

FROM node:20-bookworm-slim
WORKDIR /app
ENV NODE_ENV=production
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund --ignore-scripts
COPY --from=build /app/dist ./dist
COPY prisma/schema.prisma prisma/schema.prisma
COPY prisma/migrations prisma/migrations
EXPOSE 4000 9464
USER node
ENTRYPOINT ["node", "dist/cli/main.js"]
CMD ["--help"]

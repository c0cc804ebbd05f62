# One image for every role (migrate, flush worker, gateway): the command decides.
FROM node:20-bookworm-slim
WORKDIR /app
ENV NODE_ENV=production
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund
COPY . .
# The native schema engine is never needed: migrations run through the Wasm engine.
RUN PRISMA_SCHEMA_ENGINE_BINARY=./scripts/no-schema-engine.sh npx prisma generate
EXPOSE 4000 9464
USER node

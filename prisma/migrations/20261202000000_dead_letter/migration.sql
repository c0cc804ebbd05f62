-- CreateTable
CREATE TABLE "spend_dead_letter" (
    "id" BIGSERIAL NOT NULL,
    "batch_id" TEXT NOT NULL,
    "partition" TEXT NOT NULL,
    "kind" TEXT NOT NULL,
    "reason" TEXT NOT NULL,
    "sql_state" TEXT,
    "detail" TEXT NOT NULL,
    "payload" TEXT NOT NULL,
    "rows" INTEGER NOT NULL,
    "created_at" TIMESTAMPTZ(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "replayed_at" TIMESTAMPTZ(3),

    CONSTRAINT "spend_dead_letter_pkey" PRIMARY KEY ("id")
);

-- CreateIndex
CREATE UNIQUE INDEX "spend_dead_letter_batch_id_kind_key" ON "spend_dead_letter"("batch_id", "kind");

-- CreateIndex
CREATE INDEX "spend_dead_letter_replayed_at_idx" ON "spend_dead_letter"("replayed_at");

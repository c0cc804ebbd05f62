-- CreateTable
CREATE TABLE "spend_budget" (
    "entity_kind" TEXT NOT NULL,
    "entity_id" TEXT NOT NULL,
    "max_budget" DECIMAL(38,12),
    "soft_budget" DECIMAL(38,12),
    "budget_duration" TEXT,
    "budget_reset_at" TIMESTAMPTZ(3),
    "period_start" TIMESTAMPTZ(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "period_start_spend" DECIMAL(38,12) NOT NULL DEFAULT 0,
    "created_at" TIMESTAMPTZ(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "updated_at" TIMESTAMPTZ(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,

    CONSTRAINT "spend_budget_pkey" PRIMARY KEY ("entity_kind","entity_id")
);

-- CreateTable
CREATE TABLE "spend_budget_period" (
    "entity_kind" TEXT NOT NULL,
    "entity_id" TEXT NOT NULL,
    "period_start" TIMESTAMPTZ(3) NOT NULL,
    "period_end" TIMESTAMPTZ(3) NOT NULL,
    "spend" DECIMAL(38,12) NOT NULL,
    "max_budget" DECIMAL(38,12),

    CONSTRAINT "spend_budget_period_pkey" PRIMARY KEY ("entity_kind","entity_id","period_start")
);

-- CreateIndex
CREATE INDEX "spend_budget_updated_at_idx" ON "spend_budget"("updated_at");

-- CreateTable
CREATE TABLE "spend_budget_alert" (
    "entity_kind" TEXT NOT NULL,
    "entity_id" TEXT NOT NULL,
    "period_start" TIMESTAMPTZ(3) NOT NULL,
    "threshold" TEXT NOT NULL,
    "spend" DECIMAL(38,12) NOT NULL,
    "created_at" TIMESTAMPTZ(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "delivered_at" TIMESTAMPTZ(3),

    CONSTRAINT "spend_budget_alert_pkey" PRIMARY KEY ("entity_kind","entity_id","period_start","threshold")
);

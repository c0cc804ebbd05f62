-- AlterTable
ALTER TABLE "LiteLLM_VerificationToken" ADD COLUMN     "blocked" BOOLEAN NOT NULL DEFAULT false,
ADD COLUMN     "expires" TIMESTAMPTZ(3),
ADD COLUMN     "key_name" TEXT,
ADD COLUMN     "metadata" JSONB NOT NULL DEFAULT '{}',
ADD COLUMN     "models" TEXT[] DEFAULT ARRAY[]::TEXT[];

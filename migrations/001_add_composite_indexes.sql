-- Phase 1: the four composite indexes of the phase-1 execution report.
-- The runner owns the transaction; the report's BEGIN TRANSACTION / COMMIT lines are kept
-- to show that a hand-written file works unchanged (they are dropped, not executed).

-- migrate:up
BEGIN TRANSACTION;

CREATE INDEX IF NOT EXISTS idx_worklogs_user_range
ON worklogs(company_id, author_email, started DESC);

CREATE INDEX IF NOT EXISTS idx_worklogs_instance_range
ON worklogs(company_id, jira_instance, started DESC);

CREATE INDEX IF NOT EXISTS idx_billing_rates_lookup
ON billing_rates(billing_project_id, user_email, issue_type);

CREATE INDEX IF NOT EXISTS idx_factorial_leaves_company_status
ON factorial_leaves(user_id, status, start_date DESC);

-- Statistics for what this migration created only: a whole-database ANALYZE would read every
-- table and index inside the write lock.
ANALYZE idx_worklogs_user_range;
ANALYZE idx_worklogs_instance_range;
ANALYZE idx_billing_rates_lookup;
ANALYZE idx_factorial_leaves_company_status;

COMMIT;

-- migrate:down
DROP INDEX IF EXISTS idx_worklogs_user_range;
DROP INDEX IF EXISTS idx_worklogs_instance_range;
DROP INDEX IF EXISTS idx_billing_rates_lookup;
DROP INDEX IF EXISTS idx_factorial_leaves_company_status;
-- Dropping an index removes its sqlite_stat1 rows: no ANALYZE needed.

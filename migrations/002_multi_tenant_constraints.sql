-- Phase 2: multi-tenant constraints.
-- A worklog's team belongs to the worklog's company (composite foreign key), worklogs have a
-- positive duration and an ISO-8601 'started', leaves end on or after they start and have a
-- known status, and a billing rate is unique per (project, user, issue type).
-- Each rebuilt table keeps every current column with its type, NOT NULL and foreign keys.

-- migrate:up
-- The parent key of worklog_team_in_company: a composite foreign key needs a UNIQUE index on
-- exactly the referenced columns (else SQLite reports "foreign key mismatch").
CREATE UNIQUE INDEX IF NOT EXISTS idx_teams_company_id ON teams(company_id, id);

-- migrate:rebuild worklogs
-- team_id stays nullable: SQLite does not check a foreign key with a NULL column, so a worklog
-- without a team passes worklog_team_in_company. started must be text starting 'YYYY-MM-DD'
-- (datetime() writes 'YYYY-MM-DD HH:MM:SS'), so the report's range filters compare as text.
CREATE TABLE worklogs (
   "id" INTEGER PRIMARY KEY,
   "company_id" INTEGER NOT NULL REFERENCES "companies"("id"),
   "team_id" INTEGER REFERENCES "teams"("id"),
   "jira_instance" TEXT NOT NULL,
   "author_email" TEXT NOT NULL,
   "issue_key" TEXT NOT NULL,
   "started" TEXT NOT NULL,
   "time_spent_seconds" INTEGER NOT NULL,
   "comment" TEXT,
   CONSTRAINT worklog_team_in_company
      FOREIGN KEY ("company_id", "team_id") REFERENCES "teams"("company_id", "id"),
   CONSTRAINT positive_time CHECK ("time_spent_seconds" > 0),
   CONSTRAINT started_is_iso8601 CHECK (
      typeof("started") = 'text'
      AND "started" GLOB '[0-9][0-9][0-9][0-9]-[0-1][0-9]-[0-3][0-9]*'
   )
);

-- migrate:rebuild factorial_leaves
CREATE TABLE factorial_leaves (
   "id" INTEGER PRIMARY KEY,
   "company_id" INTEGER NOT NULL REFERENCES "companies"("id"),
   "user_id" INTEGER NOT NULL,
   "status" TEXT NOT NULL,
   "start_date" TEXT NOT NULL,
   "end_date" TEXT NOT NULL,
   CONSTRAINT leave_ends_after_start CHECK ("end_date" >= "start_date"),
   CONSTRAINT leave_status_known
      CHECK ("status" IN ('approved', 'pending', 'rejected', 'cancelled'))
);

-- migrate:up
-- A billing rate is unique per (project, user, issue type). A UNIQUE index says so without a
-- rebuild, and it replaces phase 1's plain index on the same columns instead of adding a second
-- one beside it (a UNIQUE constraint in the table would add sqlite_autoindex_billing_rates_1).
DROP INDEX IF EXISTS idx_billing_rates_lookup;
CREATE UNIQUE INDEX idx_billing_rates_lookup
ON billing_rates(billing_project_id, user_email, issue_type);

-- migrate:down
-- liteshift derives the rest of the down: after this section, in the same transaction and with
-- foreign_keys off, it rebuilds worklogs and factorial_leaves back to the definitions they had
-- before, so worklogs no longer declares worklog_team_in_company when anything can write again.
DROP INDEX IF EXISTS idx_teams_company_id;
DROP INDEX IF EXISTS idx_billing_rates_lookup;
CREATE INDEX idx_billing_rates_lookup ON billing_rates(billing_project_id, user_email, issue_type);

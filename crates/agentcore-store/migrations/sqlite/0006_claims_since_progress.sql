-- The crash-loop cap counts the claims since the job last made progress (recorded a
-- checkpoint), not all claims: a job whose workers are preempted now and then but that moves on
-- each time is not failed; one that dies before its next checkpoint MAX_JOB_ATTEMPTS times is.
-- Keep in step with ../postgres/0006_claims_since_progress.sql.
ALTER TABLE jobs ADD COLUMN claims_since_progress INTEGER NOT NULL DEFAULT 0;

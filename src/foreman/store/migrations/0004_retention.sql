-- Retention (foreman prune, FOREMAN_RETENTION_DAYS): ended runs in the order they ended, across
-- organisations. run_org_completed_idx leads with the organisation, so finding the oldest ended
-- runs of every organisation would read it whole; this one holds only terminal runs.
CREATE INDEX run_ended_idx ON run (completed_at, id)
    WHERE status IN ('completed', 'failed', 'cancelled');

-- The Vapi account (its `orgId`) each org was last reconciled in: two API keys that reach one
-- account are caught by it, even across runs.
ALTER TABLE organizations ADD COLUMN vapi_account_id text;
CREATE INDEX organizations_vapi_account_id_idx ON organizations (vapi_account_id)
    WHERE vapi_account_id IS NOT NULL;

-- desired_config: what we last asked Vapi for (secret leaves as fingerprints);
-- applied_config: what Vapi answered to that write (same masking). A field whose answer never
-- holds the desired value is reported instead of being PATCHed on every run.
-- last_patch: per field of our last PATCH, the value sent and the live value it replaced. A
-- field found back at that same live value, with the spec unchanged, is not sent again.
ALTER TABLE assistants ADD COLUMN last_patch jsonb;
COMMENT ON COLUMN assistants.desired_config IS 'desired config at the last write, secrets fingerprinted';
COMMENT ON COLUMN assistants.applied_config IS 'Vapi''s answer to the last write, secrets fingerprinted';

-- A run counts failed orgs, failed spec files and orgs skipped (held by another reconciler)
-- separately.
ALTER TABLE reconcile_runs ADD COLUMN files_failed integer NOT NULL DEFAULT 0;
ALTER TABLE reconcile_runs ADD COLUMN orgs_skipped integer NOT NULL DEFAULT 0;

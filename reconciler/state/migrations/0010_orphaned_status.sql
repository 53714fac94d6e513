-- An org whose spec is gone and that was not retired is `Orphaned` (not Ready, not Stalled):
-- `status`, the status API and the metrics say so.
ALTER TABLE organizations DROP CONSTRAINT IF EXISTS organizations_status_check;
ALTER TABLE organizations ADD CONSTRAINT organizations_status_check
    CHECK (status IN ('Pending', 'Ready', 'Failed', 'Stalled', 'Retired', 'Orphaned'));

-- The whole lifecycle of an org: retired orgs keep their row and history, their slug can be
-- taken by a new org id, and the mappings of deleted assistants stay (inactive) for a
-- retention window, so the late webhooks of their last calls still reach the right org.

ALTER TABLE organizations ADD COLUMN retired_at timestamptz;
ALTER TABLE organizations DROP CONSTRAINT IF EXISTS organizations_status_check;
ALTER TABLE organizations ADD CONSTRAINT organizations_status_check
    CHECK (status IN ('Pending', 'Ready', 'Failed', 'Stalled', 'Retired'));
-- A slug is unique among live orgs only: retiring one frees its slug.
ALTER TABLE organizations DROP CONSTRAINT IF EXISTS organizations_slug_key;
CREATE UNIQUE INDEX organizations_live_slug_key ON organizations (slug) WHERE retired_at IS NULL;

-- A mapping row outlives its assistant by the retention window: `inactive_at` is when it
-- stopped being the role's current assistant. One active row per (org, role).
ALTER TABLE assistant_org_mapping ADD COLUMN inactive_at timestamptz;
ALTER TABLE assistant_org_mapping
    DROP CONSTRAINT IF EXISTS assistant_org_mapping_org_id_assistant_role_key;
CREATE UNIQUE INDEX assistant_org_mapping_active_role_key
    ON assistant_org_mapping (org_id, assistant_role) WHERE inactive_at IS NULL;
CREATE INDEX assistant_org_mapping_inactive_at_idx
    ON assistant_org_mapping (inactive_at) WHERE inactive_at IS NOT NULL;

-- A retired org's Vapi credential is cut down to its webhook secret (the API key is gone) and
-- stays usable, for verifying late webhooks only, until this time; then it is removed.
ALTER TABLE org_credentials ADD COLUMN webhook_only_until timestamptz;

DROP TRIGGER assistant_org_mapping_notify ON assistant_org_mapping;
CREATE TRIGGER assistant_org_mapping_notify
    AFTER INSERT OR DELETE OR UPDATE OF vapi_assistant_id, org_id, assistant_role, inactive_at
    ON assistant_org_mapping FOR EACH ROW EXECUTE FUNCTION reconciler_notify_mapping();

DROP TRIGGER organizations_notify ON organizations;
CREATE TRIGGER organizations_notify AFTER UPDATE ON organizations FOR EACH ROW
    WHEN (OLD.slug IS DISTINCT FROM NEW.slug
          OR OLD.webhook_forward_url IS DISTINCT FROM NEW.webhook_forward_url
          OR OLD.vapi_account_id IS DISTINCT FROM NEW.vapi_account_id
          OR OLD.retired_at IS DISTINCT FROM NEW.retired_at)
    EXECUTE FUNCTION reconciler_notify_org();

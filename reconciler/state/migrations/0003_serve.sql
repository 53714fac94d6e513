-- `reconciler serve`: conditions and history per org, the schedule shared by replicas, the
-- webhook forward URL, webhook-secret rotation, and cache invalidation across processes.

-- Flux-like conditions (Ready, Reconciling, Stalled), each {type, status, reason, message}.
-- `status` stays as their one-word summary. Status rows are written when a condition or a
-- revision changes, or as a heartbeat at most every 10 minutes (`last_reconciled_at`).
ALTER TABLE organizations DROP CONSTRAINT IF EXISTS organizations_status_check;
ALTER TABLE organizations ADD CONSTRAINT organizations_status_check
    CHECK (status IN ('Pending', 'Ready', 'Failed', 'Stalled'));
ALTER TABLE organizations ADD COLUMN conditions jsonb NOT NULL DEFAULT '[]'::jsonb;
ALTER TABLE organizations ADD COLUMN status_changed_at timestamptz;
ALTER TABLE organizations ADD COLUMN last_attempted_revision text;
ALTER TABLE organizations ADD COLUMN last_applied_revision text;
ALTER TABLE organizations ADD COLUMN webhook_forward_url text;

-- The last runs of each org (at most 10 are kept), written with its status row.
CREATE TABLE org_runs (
    id          bigserial PRIMARY KEY,
    org_id      uuid NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    run_id      bigint REFERENCES reconcile_runs (id) ON DELETE SET NULL,
    at          timestamptz NOT NULL DEFAULT now(),
    outcome     text NOT NULL,
    revision    text,
    changes     jsonb NOT NULL DEFAULT '{}'::jsonb,
    message     text
);
CREATE INDEX org_runs_org_id_idx ON org_runs (org_id, id DESC);
CREATE INDEX org_runs_run_id_idx ON org_runs (run_id);  -- for ON DELETE SET NULL

-- When each org is due, shared by every replica: claimed with FOR UPDATE SKIP LOCKED in one
-- statement (no session state, so it works behind a transaction pooler). No foreign key: an
-- org is scheduled before its first apply writes its row. `failures` drives the backoff.
CREATE TABLE org_schedule (
    org_id       uuid PRIMARY KEY,
    next_run_at  timestamptz NOT NULL DEFAULT now(),
    spec_digest  text,
    failures     integer NOT NULL DEFAULT 0,
    claimed_by   text,
    claimed_at   timestamptz
);
CREATE INDEX org_schedule_next_run_at_idx ON org_schedule (next_run_at);

-- Rotating a webhook secret: the config it replaced stays usable for verifying webhooks until
-- every assistant of the org carries the new one (previous_valid_until NULL meanwhile), then
-- for a short grace.
ALTER TABLE org_credentials ADD COLUMN previous_encrypted_config text;
ALTER TABLE org_credentials ADD COLUMN previous_valid_until timestamptz;

-- Every change the resolver caches is announced on channel `reconciler_webhooks` (delivered at
-- commit): an assistant id, or `org:<uuid>` for an org's credentials or row.
CREATE FUNCTION reconciler_notify_mapping() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        PERFORM pg_notify('reconciler_webhooks', OLD.vapi_assistant_id);
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        PERFORM pg_notify('reconciler_webhooks', NEW.vapi_assistant_id);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER assistant_org_mapping_notify
    AFTER INSERT OR DELETE OR UPDATE OF vapi_assistant_id, org_id, assistant_role
    ON assistant_org_mapping FOR EACH ROW EXECUTE FUNCTION reconciler_notify_mapping();

CREATE FUNCTION reconciler_notify_org() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    row_org uuid;
BEGIN
    IF TG_TABLE_NAME = 'organizations' THEN
        row_org := COALESCE(NEW.id, OLD.id);
    ELSIF COALESCE(NEW.provider, OLD.provider) = 'vapi' THEN
        row_org := COALESCE(NEW.org_id, OLD.org_id);
    ELSE
        RETURN NULL;  -- only the Vapi credential (the webhook secret) is cached
    END IF;
    PERFORM pg_notify('reconciler_webhooks', 'org:' || row_org::text);
    RETURN NULL;
END $$;
CREATE TRIGGER org_credentials_notify AFTER INSERT OR UPDATE OR DELETE
    ON org_credentials FOR EACH ROW EXECUTE FUNCTION reconciler_notify_org();
CREATE TRIGGER organizations_notify AFTER UPDATE ON organizations FOR EACH ROW
    WHEN (OLD.slug IS DISTINCT FROM NEW.slug
          OR OLD.webhook_forward_url IS DISTINCT FROM NEW.webhook_forward_url
          OR OLD.vapi_account_id IS DISTINCT FROM NEW.vapi_account_id)
    EXECUTE FUNCTION reconciler_notify_org();
CREATE TRIGGER organizations_notify_delete AFTER DELETE ON organizations FOR EACH ROW
    EXECUTE FUNCTION reconciler_notify_org();

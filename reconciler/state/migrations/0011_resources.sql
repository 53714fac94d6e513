-- The number the outbound assistant calls from (`spec.outbound.phoneNumber`): its Vapi id is
-- offered to the platform's services with the org (status API, credential API).
ALTER TABLE organizations ADD COLUMN outbound_phone_number text;

-- The kinds beyond assistants (issue 16): tools and phone numbers, one table for every kind.
-- `name` is the object's natural key within its org (a tool's name, a number in E.164 or its
-- SIP URI): Vapi has no `metadata` on these kinds, so the key is the ownership proof. The
-- rows follow the `assistants` table's discipline: `creating` is committed before the POST.
CREATE TABLE vapi_resources (
    org_id              uuid NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    kind                text NOT NULL CHECK (kind IN ('tool', 'phoneNumber')),
    name                text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    vapi_id             text,
    status              text NOT NULL CHECK (status IN ('creating', 'ready')),
    desired_config      jsonb NOT NULL,
    applied_config      jsonb,
    last_patch          jsonb,
    create_started_at   timestamptz,
    updated_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (org_id, kind, name)
);

-- One org per number: a number (or SIP URI) is held by at most one live org.
CREATE UNIQUE INDEX vapi_resources_one_org_per_number
    ON vapi_resources (name) WHERE kind = 'phoneNumber';

-- What the webhook resolver reads besides assistant_org_mapping: a Vapi object id -> org (a
-- call to a number with no assistant carries only `call.phoneNumberId`). Kept in the same
-- transaction as the `vapi_resources` row; a replaced or deleted object's row stays inactive
-- for the retention window, as assistants' rows do.
CREATE TABLE resource_org_mapping (
    vapi_id             text PRIMARY KEY,
    kind                text NOT NULL CHECK (kind IN ('tool', 'phoneNumber')),
    org_id              uuid NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    name                text NOT NULL,
    created_at          timestamptz NOT NULL DEFAULT now(),
    last_used_at        timestamptz,
    inactive_at         timestamptz
);
CREATE INDEX resource_org_mapping_org_id_idx ON resource_org_mapping (org_id);
CREATE UNIQUE INDEX resource_org_mapping_active_key
    ON resource_org_mapping (org_id, kind, name) WHERE inactive_at IS NULL;
CREATE INDEX resource_org_mapping_inactive_at_idx
    ON resource_org_mapping (inactive_at) WHERE inactive_at IS NOT NULL;

CREATE FUNCTION reconciler_notify_resource() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        PERFORM pg_notify('reconciler_webhooks', OLD.vapi_id);
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        PERFORM pg_notify('reconciler_webhooks', NEW.vapi_id);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER resource_org_mapping_notify
    AFTER INSERT OR DELETE OR UPDATE OF vapi_id, org_id, kind, inactive_at
    ON resource_org_mapping FOR EACH ROW EXECUTE FUNCTION reconciler_notify_resource();

SELECT reconciler_tenant_isolate('vapi_resources');
SELECT reconciler_tenant_isolate('resource_org_mapping');

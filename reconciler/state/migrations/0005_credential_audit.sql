-- The credential API for the platform's services (`reconciler.credentials`): every read of a
-- credential is recorded here (never its value), and every credential change is announced so
-- that the services' caches drop it at once.

-- One row per read: which org's credential of which provider, read by which service (the
-- caller name it gave), when, and what it got ('ok', 'not_found', 'error'). Written in
-- batches by the reading process; rows older than its retention (default 90 days) are
-- deleted by those processes, in bounded batches.
CREATE TABLE credential_audit (
    id          bigserial PRIMARY KEY,
    org_id      uuid,                  -- NULL: the caller asked for something that is no org id
    provider    text NOT NULL,
    caller      text NOT NULL,
    at          timestamptz NOT NULL,
    outcome     text NOT NULL CHECK (outcome IN ('ok', 'not_found', 'error'))
);
-- `reconciler audit --since` (newest first) and the retention's deletes
CREATE INDEX credential_audit_at_idx ON credential_audit (at);
-- `reconciler audit --org SLUG [--since ...]`
CREATE INDEX credential_audit_org_at_idx ON credential_audit (org_id, at);

-- Every change to what a credential read returns (its ciphertext, whether it is active, the
-- row itself) is announced on channel `reconciler_credentials` at commit, as `org_id:provider`.
-- (Migration 0003's `reconciler_webhooks` announces only the Vapi credential.) Updates that
-- change nothing a read returns (verification times, a replaced webhook secret) stay silent.
CREATE FUNCTION reconciler_notify_credential() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        PERFORM pg_notify('reconciler_credentials', OLD.org_id::text || ':' || OLD.provider);
    END IF;
    IF TG_OP = 'INSERT' OR (TG_OP = 'UPDATE'
            AND (OLD.org_id, OLD.provider) IS DISTINCT FROM (NEW.org_id, NEW.provider)) THEN
        PERFORM pg_notify('reconciler_credentials', NEW.org_id::text || ':' || NEW.provider);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER org_credentials_notify_credential
    AFTER INSERT OR DELETE ON org_credentials
    FOR EACH ROW EXECUTE FUNCTION reconciler_notify_credential();
CREATE TRIGGER org_credentials_notify_credential_update
    AFTER UPDATE ON org_credentials FOR EACH ROW
    WHEN (OLD.encrypted_config IS DISTINCT FROM NEW.encrypted_config
          OR OLD.is_active IS DISTINCT FROM NEW.is_active
          OR OLD.org_id IS DISTINCT FROM NEW.org_id
          OR OLD.provider IS DISTINCT FROM NEW.provider)
    EXECUTE FUNCTION reconciler_notify_credential();
-- A TRUNCATE (of the table, or cascading from organizations) fires no row trigger: it is
-- announced as `*`, and listeners drop everything.
CREATE FUNCTION reconciler_notify_credentials_truncated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('reconciler_credentials', '*');
    RETURN NULL;
END $$;
CREATE TRIGGER org_credentials_notify_truncate AFTER TRUNCATE ON org_credentials
    FOR EACH STATEMENT EXECUTE FUNCTION reconciler_notify_credentials_truncated();

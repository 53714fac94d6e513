-- Org isolation in Postgres for the platform's own services: the role `reconciler_tenant`
-- (NOLOGIN; grant it to the login role a service uses) sees and writes only the rows of the
-- org named by `SET app.org_id = '<uuid>'` (per session, or `set_config(..., true)` per
-- transaction). Without it, or with an empty one, it sees nothing. The reconciler's own role
-- owns the tables, so row-level security does not apply to it (no FORCE).

-- Roles belong to the cluster: created once, shared by every database that migrates here.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'reconciler_tenant') THEN
        BEGIN
            CREATE ROLE reconciler_tenant NOLOGIN;
        EXCEPTION
            WHEN duplicate_object OR unique_violation THEN
                NULL;  -- another database's migration created it meanwhile
            WHEN insufficient_privilege THEN
                RAISE EXCEPTION 'cannot create the role reconciler_tenant (the reconciler''s '
                    'database role lacks CREATEROLE): have an administrator run '
                    '"CREATE ROLE reconciler_tenant NOLOGIN", then migrate again';
        END;
    END IF;
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO reconciler_tenant', current_schema());
END $$;

-- The org a tenant session may see: NULL (nothing) when unset or empty.
CREATE FUNCTION reconciler_tenant_org() RETURNS uuid LANGUAGE sql STABLE AS $$
    SELECT NULLIF(current_setting('app.org_id', true), '')::uuid
$$;

-- One table under tenant isolation, by its org column: row-level security with a permissive
-- policy for every role (any other role the platform grants tables to, e.g. a read-only role
-- for `plan`, sees what it saw before) and a RESTRICTIVE one for `reconciler_tenant` and its
-- members (USING for what they see, WITH CHECK for what they write), and the tenant's grants.
-- Every later migration that creates a table with an org column calls it (a test checks).
CREATE FUNCTION reconciler_tenant_isolate(tbl regclass, org_column text DEFAULT 'org_id')
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY', tbl);
    EXECUTE format('DROP POLICY IF EXISTS every_role ON %s', tbl);
    EXECUTE format('CREATE POLICY every_role ON %s FOR ALL TO PUBLIC USING (true)', tbl);
    EXECUTE format('DROP POLICY IF EXISTS tenant_isolation ON %s', tbl);
    EXECUTE format(
        'CREATE POLICY tenant_isolation ON %s AS RESTRICTIVE FOR ALL TO reconciler_tenant'
        ' USING (%I = reconciler_tenant_org()) WITH CHECK (%I = reconciler_tenant_org())',
        tbl, org_column, org_column);
    EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON %s TO reconciler_tenant', tbl);
END $$;

GRANT EXECUTE ON FUNCTION reconciler_tenant_org() TO reconciler_tenant;

SELECT reconciler_tenant_isolate('organizations', 'id');
SELECT reconciler_tenant_isolate('org_credentials');
SELECT reconciler_tenant_isolate('assistants');
SELECT reconciler_tenant_isolate('assistant_org_mapping');
SELECT reconciler_tenant_isolate('org_runs');
SELECT reconciler_tenant_isolate('org_schedule');

-- Sequences behind tenant-writable tables (bigserial ids).
GRANT USAGE ON SEQUENCE org_runs_id_seq TO reconciler_tenant;
SELECT reconciler_tenant_isolate('credential_audit');
GRANT USAGE ON SEQUENCE credential_audit_id_seq TO reconciler_tenant;

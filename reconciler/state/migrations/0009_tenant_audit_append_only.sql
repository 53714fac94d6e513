-- The credential audit is append-only for tenants: a `reconciler_tenant` session may add rows
-- for its own org as its reads happen (INSERT, with 0006's policy checking the org), and read
-- them, but may never change or remove one, its own org's included: an audit its subject can
-- rewrite records nothing. 0006 granted it UPDATE and DELETE as on every org table.
-- Retention deletes are made by the credential store's own role (see the README), which keeps
-- its grants.
REVOKE UPDATE, DELETE, TRUNCATE ON credential_audit FROM reconciler_tenant;

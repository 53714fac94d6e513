-- Which master key id is active (issue 14: a rotation is never undone). One row, set by
-- `reconciler keys rotate` (before it re-encrypts anything), or, while there is none, by the
-- first credential write (whose process must hold every key id the stored rows use). A process
-- whose active key (the first of RECONCILER_MASTER_KEYS) is not `key_id` writes no credential:
-- every credential write checks this row in its own statement, holding it FOR SHARE, so a
-- concurrent `keys rotate` (which updates it) waits for the write or the write sees the new id.
-- `retired`: the ids earlier rotations replaced; `keys rotate` never makes one active again.
-- `key_check`: a keyed digest of a constant under the active key (reveals nothing of it), so a
-- process holding another key under the active id (a wrong key) is refused too; NULL until a
-- `keys rotate` (which first opens a row under the id) or the first write of an empty database.
CREATE TABLE master_key (
    id boolean PRIMARY KEY DEFAULT true CHECK (id),
    key_id text NOT NULL,
    key_check text,
    retired text[] NOT NULL DEFAULT '{}',
    set_by text NOT NULL,
    set_at timestamptz NOT NULL DEFAULT now()
);

-- The key id a sealed credential names (`v2:<id>:...`; older `v1:...` tokens: `default`), as
-- reconciler.secrets.crypto.token_key_id says it.
CREATE FUNCTION reconciler_token_key_id(token text) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT CASE WHEN token LIKE 'v2:%' THEN split_part(token, ':', 2) ELSE 'default' END
$$;

-- A database whose credentials are all under one key id is pinned to it now; one with none,
-- or mid-rotation (several ids), is pinned by the next `keys rotate` or first credential write.
INSERT INTO master_key (key_id, set_by)
SELECT min(reconciler_token_key_id(encrypted_config)), 'db migrate (0008: the one key id in use)'
FROM org_credentials
HAVING count(DISTINCT reconciler_token_key_id(encrypted_config)) = 1;

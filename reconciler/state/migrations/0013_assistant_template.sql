-- The template (`name@version`) each assistant was last written from: a plan compares it with
-- the spec's to show which orgs a template change moves (the blast radius) and to bound how
-- many one run may move (`--max-template-orgs`). NULL: written in full in the org file, or
-- written before templates existed.
ALTER TABLE assistants ADD COLUMN IF NOT EXISTS template text
    CHECK (template ~ '^[a-z0-9][a-z0-9-]{0,62}@[0-9]{1,9}$');

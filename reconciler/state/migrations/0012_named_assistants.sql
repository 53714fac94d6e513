-- Assistants beyond `inbound` and `outbound`, by name (`spec.assistants.afterHours`): the
-- role columns hold any assistant name the spec allows (`ASSISTANT_NAME_PATTERN`).
ALTER TABLE assistants DROP CONSTRAINT IF EXISTS assistants_role_check;
ALTER TABLE assistants ADD CONSTRAINT assistants_role_check
    CHECK (role ~ '^[a-z][a-zA-Z0-9-]{0,31}$');
ALTER TABLE assistant_org_mapping
    DROP CONSTRAINT IF EXISTS assistant_org_mapping_assistant_role_check;
ALTER TABLE assistant_org_mapping ADD CONSTRAINT assistant_org_mapping_assistant_role_check
    CHECK (assistant_role ~ '^[a-z][a-zA-Z0-9-]{0,31}$');

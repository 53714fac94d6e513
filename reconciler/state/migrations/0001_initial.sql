-- Organisations as last applied from their spec files, with a Flux-like status.
CREATE TABLE organizations (
    id                  uuid PRIMARY KEY,
    slug                text NOT NULL UNIQUE,
    name                text NOT NULL,
    status              text NOT NULL DEFAULT 'Pending'
                        CHECK (status IN ('Pending', 'Ready', 'Failed')),
    status_message      text,
    last_reconciled_at  timestamptz,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);

-- One row per (org, provider); the config is AES-256-GCM under the master key, bound to the row.
CREATE TABLE org_credentials (
    id                  uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    org_id              uuid NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    provider            text NOT NULL
                        CHECK (provider IN ('vapi', 'twilio', 'google_calendar', 'resend', 'elevenlabs')),
    encrypted_config    text NOT NULL,
    fingerprint         text NOT NULL,          -- keyed HMAC of the plaintext: change detection
    is_active           boolean NOT NULL DEFAULT true,
    last_verified_at    timestamptz,
    verification_error  text,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    UNIQUE (org_id, provider)
);

-- Desired and last-applied config of each org's assistants. status 'creating' is written and
-- committed before the POST (create-pending): a crash leaves it, and the next run adopts the
-- tagged assistant instead of creating a second one.
CREATE TABLE assistants (
    org_id              uuid NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    role                text NOT NULL CHECK (role IN ('inbound', 'outbound')),
    vapi_assistant_id   text,
    status              text NOT NULL CHECK (status IN ('creating', 'ready')),
    desired_config      jsonb NOT NULL,
    applied_config      jsonb,
    create_started_at   timestamptz,
    updated_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (org_id, role)
);

-- What the webhook resolver reads: Vapi assistant id -> org.
CREATE TABLE assistant_org_mapping (
    id                  uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    vapi_assistant_id   text NOT NULL UNIQUE,
    org_id              uuid NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    assistant_role      text NOT NULL CHECK (assistant_role IN ('inbound', 'outbound')),
    assistant_name      text,
    created_at          timestamptz NOT NULL DEFAULT now(),
    last_used_at        timestamptz,
    UNIQUE (org_id, assistant_role)
);
CREATE INDEX assistant_org_mapping_org_id_idx ON assistant_org_mapping (org_id);

-- One row per reconcile run (apply or a serve tick).
CREATE TABLE reconcile_runs (
    id                  bigserial PRIMARY KEY,
    command             text NOT NULL,
    started_at          timestamptz NOT NULL DEFAULT now(),
    finished_at         timestamptz,
    orgs_total          integer NOT NULL DEFAULT 0,
    orgs_failed         integer NOT NULL DEFAULT 0,
    changes             jsonb NOT NULL DEFAULT '{}'::jsonb,
    errors              jsonb NOT NULL DEFAULT '[]'::jsonb
);

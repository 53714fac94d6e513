-- Template rollouts in waves: one row per template version being rolled out
-- (`name@version`), written by apply and serve, resumed by `reconciler rollout resume`.
CREATE TABLE IF NOT EXISTS template_rollouts (
    template text PRIMARY KEY CHECK (template ~ '^[a-z0-9][a-z0-9-]{0,62}@[0-9]{1,9}$'),
    wave integer NOT NULL DEFAULT 1 CHECK (wave >= 1),  -- the wave under way (from 1)
    waves integer NOT NULL CHECK (waves >= 1),          -- as the template declared them
    wave_started_at timestamptz NOT NULL DEFAULT now(),
    wave_ready_at timestamptz,   -- every org of the wave first seen Ready on the version
    halted_at timestamptz,       -- an org of the wave failed: no new wave until resumed
    halted_reason text,
    resumed_at timestamptz,
    done_at timestamptz,         -- every org moved
    started_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

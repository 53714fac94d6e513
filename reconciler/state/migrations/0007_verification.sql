-- Credential verification (`reconciler verify`, and `serve` every RECONCILER_VERIFY_INTERVAL):
-- when a credential was last checked against its provider, whatever the answer. `serve`
-- replicas claim the rows whose last attempt is older than the interval (or older than the
-- row's last change) with FOR UPDATE SKIP LOCKED and stamp them at once, so each credential is
-- verified about once per interval however many replicas run. `last_verified_at` (the last
-- success) and `verification_error` (the last failure, NULL after a success) stay as they were.
ALTER TABLE org_credentials ADD COLUMN verification_attempted_at timestamptz;

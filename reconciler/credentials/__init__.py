"""The credential API for the platform's services: an org's provider credentials, as the
reconciler stored them from its spec, decrypted on demand, cached, audited.

    from reconciler.credentials import CredentialStore, CredentialNotFound

    store = CredentialStore.from_settings(caller="sms-service")  # the CLI's environment
    tw = store.twilio(org_id)          # .account_sid, .auth_token: SecretStr
    store.vapi(org_id)                 # .api_key, .webhook_secret
    store.google_calendar(org_id)      # .client_id, .client_secret, .refresh_token
    store.resend(org_id); store.elevenlabs(org_id)   # .api_key
    store.org_for_assistant(assistant_id)  # AssistantOrg(.org_id, .slug, .role) or None
    store.outbound_number(org_id)      # OutboundNumber(.phone_number, .phone_number_id) or None
    store.stats()                      # hits, misses, evictions, audit rows ...
    store.close()                      # flushes the audit

Loads only `reconciler.state`, `reconciler.secrets`, `reconciler.config`, `reconciler.metrics`
and `reconciler.errors` (and `reconciler.redact`): never the engine, the spec loader, the Vapi
client or the server.
"""

from reconciler.credentials.models import (
    AssistantOrg,
    CredentialError,
    CredentialNotFound,
    Credentials,
    CredentialUnavailable,
    ElevenLabsCredentials,
    GoogleCalendarCredentials,
    OutboundNumber,
    ResendCredentials,
    TwilioCredentials,
    VapiCredentials,
)
from reconciler.credentials.store import CredentialStore

__all__ = [
    "AssistantOrg",
    "CredentialError",
    "CredentialNotFound",
    "CredentialStore",
    "CredentialUnavailable",
    "Credentials",
    "ElevenLabsCredentials",
    "GoogleCalendarCredentials",
    "OutboundNumber",
    "ResendCredentials",
    "TwilioCredentials",
    "VapiCredentials",
]

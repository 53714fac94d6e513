"""GitOps reconciler for multi-tenant (bring-your-own-credentials) Vapi deployments."""

__version__ = "0.1.0"

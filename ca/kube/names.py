"""Default names of the cluster objects meshca keeps. No client here: `meshca serve`'s flags take
their defaults from this module without importing the Kubernetes client."""

from __future__ import annotations

WEBHOOK_CONFIGURATION = "meshca-sidecar-injector"
"""The injection webhook's MutatingWebhookConfiguration, whose caBundle the leader keeps."""

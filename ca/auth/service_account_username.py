"""The username Kubernetes gives a service account, `system:serviceaccount:<ns>:<sa>`.

A module of its own: `meshca agent` reads it from its token's subject, and importing it does not
import the CA's view of a caller (`ca.auth.k8s_identity`), which `meshca agent --once on` (an
init container, which its pod waits for) does not use.
"""

from __future__ import annotations

from ca.errors import AuthenticationError

SA_PREFIX = "system:serviceaccount:"


def split_username(username: object) -> tuple[str, str]:
    """`system:serviceaccount:<ns>:<sa>` -> (ns, sa)."""
    if not isinstance(username, str) or not username.startswith(SA_PREFIX):
        raise AuthenticationError(
            f"the token's subject {username!r} is not a service account; meshca certifies "
            "workloads by their service-account token (system:serviceaccount:<ns>:<sa>)",
            reason="token_not_service_account",
        )
    namespace, sep, name = username[len(SA_PREFIX) :].partition(":")
    if not (namespace and sep and name) or ":" in name:
        raise AuthenticationError(
            f"the token's subject {username!r} is not of the form system:serviceaccount:<ns>:<sa>",
            reason="token_not_service_account",
        )
    return namespace, name

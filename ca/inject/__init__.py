"""Sidecar injection: what meshca adds to a pod (pure), per workload kind, as a JSON patch; the CLI."""

"""The workload agent: keeps a fresh certificate where the sidecar and the application read it."""

"""The Kubernetes edge: every call to the API server goes through this package."""

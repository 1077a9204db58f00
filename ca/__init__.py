"""meshca: a certificate authority for Kubernetes service meshes."""

__version__ = "0.1.0"

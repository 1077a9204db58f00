"""`meshca up`: a local sandbox of a CA and three demo workloads over mutual TLS, with a live view."""

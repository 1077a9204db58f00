"""The CA server: wiring, the certificate and admin gRPC APIs, its serving certificate and state."""

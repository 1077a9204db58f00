"""The enforcer: PeerAuthentication applied to real inbound (and outbound) connections."""

"""The issuance core: SPIFFE identities, the X.509 profile, CSRs, keys and the signing authority."""

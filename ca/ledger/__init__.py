"""The issuance ledger: every identity issued or refused, hash-chained and signed."""

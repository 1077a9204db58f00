"""`meshca audit`: list, show, export, report on and verify the issuance ledger."""

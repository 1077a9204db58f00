"""The operator\x27s forced rotation and revocation commands: `meshca rotate` and `meshca revoke`."""

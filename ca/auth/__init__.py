"""Authentication of certificate requests: who is asking, proven how."""

"""PeerAuthentication: the policy model, Istio's resolution rules, and where policies come from."""

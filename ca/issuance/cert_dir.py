"""The files a workload's certificate directory holds, in Istio's layout.

`meshca agent` writes them; `meshca enforce` and sidecars read them. The three files
(and `crl.pem`, once the CA has sent revocation lists) sit in a timestamped directory
that the `..data` link names, and the link is switched in one rename, so a reader
never pairs a new key with an old chain.
"""

CERT_CHAIN = "cert-chain.pem"
KEY = "key.pem"
ROOT_CERT = "root-cert.pem"
# The CA's revocation lists (PEM, one after another), once the agent has received them.
CRL = "crl.pem"
# CA certificates (PEM) that signed some of those CRLs without being in the workload's own chain
# (while the CA rotates, another signing CA's): trusted when they chain to root-cert.pem.
CRL_SIGNERS = "crl-signers.pem"
DATA_LINK = "..data"

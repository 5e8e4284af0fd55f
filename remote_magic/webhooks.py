"""Checking a webhook delivery on the receiving side: `verify(secret, body, header)`.

The public face of the signing rules, which live in the contract (contract/signing.py) because the
server signs with the same code.
"""

from .contract.signing import InvalidSignature, verify

__all__ = ["InvalidSignature", "verify"]

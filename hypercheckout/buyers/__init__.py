"""Verified buyers: who a buyer is, as a signed token (a JWT from the shop's issuer) says, not as a body says."""

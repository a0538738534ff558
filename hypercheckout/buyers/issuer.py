"""A local issuer of buyers' tokens, so that `hypercheckout up --buyer-auth jwt`, the tests and the load tests use
real signed tokens with no outside service: an Ed25519 key pair in the data dir (the private key readable by its
owner only) and the JWKS the replicas trust. A shop deploys its own identity provider instead."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from hypercheckout.settings import LOCAL_ISSUER as ISSUER

AUDIENCE = "hypercheckout"
KEY_ID = "local-1"


@dataclass(frozen=True)
class LocalIssuer:
    directory: Path  # DATA/issuer: private.pem (0600) and jwks.json

    @property
    def jwks_path(self) -> Path:
        return self.directory / "jwks.json"

    @property
    def private_path(self) -> Path:
        return self.directory / "private.pem"

    def ensure(self) -> LocalIssuer:
        """Make the key pair and its JWKS on first use; keep them afterwards (tokens stay valid across restarts)."""
        if self.private_path.exists() and self.jwks_path.exists():
            return self
        self.directory.mkdir(parents=True, exist_ok=True)
        key = ed25519.Ed25519PrivateKey.generate()
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        descriptor = os.open(self.private_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "wb") as out:
            out.write(pem)
        public = jwt.algorithms.OKPAlgorithm.to_jwk(key.public_key(), as_dict=True)
        document = {"keys": [{**public, "kid": KEY_ID, "use": "sig", "alg": "EdDSA"}]}
        self.jwks_path.write_text(json.dumps(document, indent=2) + "\n")
        return self

    @cached_property
    def _key(self) -> ed25519.Ed25519PrivateKey:
        key = serialization.load_pem_private_key(self.private_path.read_bytes(), password=None)
        assert isinstance(key, ed25519.Ed25519PrivateKey)
        return key

    def mint(self, subject: str, *, ttl: float = 3600.0, now: int | None = None) -> str:
        """A token for ``subject``, valid ``ttl`` seconds from ``now`` (default: this instant, whole seconds)."""
        now = int(time.time()) if now is None else now
        claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": subject, "iat": now, "nbf": now, "exp": now + int(ttl)}
        return jwt.encode(claims, self._key, algorithm="EdDSA", headers={"kid": KEY_ID})

    def settings_env(self) -> dict[str, str]:
        """What the replicas need to trust this issuer."""
        return {"HC_BUYER_AUTH": "jwt", "HC_JWT_ISSUER": ISSUER, "HC_JWT_AUDIENCE": AUDIENCE,
                "HC_JWKS_FILE": str(self.jwks_path.absolute())}

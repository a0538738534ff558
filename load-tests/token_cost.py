"""What verifying a buyer's token costs inside a replica: the first use of each token (signature checked) against a
token remembered, with the local issuer's EdDSA keys. `python load-tests/token_cost.py [--tokens N]`."""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from hypercheckout.buyers.issuer import AUDIENCE, ISSUER, LocalIssuer  # noqa: E402
from hypercheckout.buyers.tokens import TokenVerifier, jwks_file  # noqa: E402


async def measure(count: int, rounds: int) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        issuer = LocalIssuer(Path(tmp) / "issuer").ensure()
        tokens = [issuer.mint(f"buyer-{n}") for n in range(count)]
        verifier = TokenVerifier(jwks_file(issuer.jwks_path), issuer=ISSUER, audience=AUDIENCE)
        await verifier.refresh()
        started = time.perf_counter()
        for token in tokens:
            await verifier.verify(token)
        first = (time.perf_counter() - started) / count
        started = time.perf_counter()
        for _ in range(rounds):
            for token in tokens:
                await verifier.verify(token)
        again = (time.perf_counter() - started) / (count * rounds)
    return first, again


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tokens", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5, help="passes over the remembered tokens")
    args = parser.parse_args()
    first, again = asyncio.run(measure(args.tokens, args.rounds))
    print(f"{args.tokens:,} tokens: first use {first * 1e6:.0f} µs each (signature checked), remembered "
          f"{again * 1e6:.2f} µs each ({args.rounds} passes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

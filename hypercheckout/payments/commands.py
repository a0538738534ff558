"""The payment commands of the CLI: `hypercheckout payments-simulator` and `hypercheckout payments reconcile|status`.
Kept here, beside what they run; cli.py only registers them."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import sys

from hypercheckout.payments.simulator import DEFAULT_KEY, DEFAULT_WEBHOOK_SECRET, Faults, Simulator, serve
from hypercheckout.settings import Settings
from hypercheckout.store import Store
from hypercheckout.store import payments as sql


def add_simulator_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--port", type=int, default=12111)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--webhook-url", action="append", default=[],
                   help="where events are delivered (repeatable), e.g. http://127.0.0.1:8080/webhooks/payments")
    p.add_argument("--api-key", default=DEFAULT_KEY, help="the secret key clients must send")
    p.add_argument("--webhook-secret", default=DEFAULT_WEBHOOK_SECRET, help="the secret events are signed with")
    p.add_argument("--webhook-delay-ms", type=int, default=0, help="before each delivery")
    p.add_argument("--reorder-ms", type=int, default=0, help="a random extra delay up to this: events overtake")
    p.add_argument("--duplicate", type=float, default=0.0, help="probability an event is delivered twice")
    p.add_argument("--lose", type=float, default=0.0, help="probability a delivery is lost (retried later)")


def cmd_payments_simulator(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    simulator = Simulator(api_key=args.api_key, webhook_secret=args.webhook_secret, webhook_urls=args.webhook_url,
                          faults=Faults(webhook_delay_ms=args.webhook_delay_ms, reorder_ms=args.reorder_ms,
                                        duplicate=args.duplicate, lose=args.lose))
    print(f"payment simulator on http://{args.host}:{args.port} (test payments only; no card is ever taken)",
          flush=True)
    try:
        asyncio.run(serve(simulator, args.host, args.port))
    except KeyboardInterrupt:
        return 130
    return 0


def add_payments_arguments(p: argparse.ArgumentParser) -> None:
    actions = p.add_subparsers(dest="action", required=True)
    a = actions.add_parser("reconcile", help="settle every payment in doubt now (as the replicas do periodically)")
    a.add_argument("--json", action="store_true")
    a = actions.add_parser("status", help="checkouts, money and units per product and payment status")
    a.add_argument("--json", action="store_true")
    for a in actions.choices.values():
        a.add_argument("--data-dir", default=argparse.SUPPRESS, help="use the cluster `hypercheckout up` started "
                                                                     "in this directory")


async def _payments(settings: Settings, args: argparse.Namespace) -> int:
    from hypercheckout.app import payment_provider  # the replicas' own wiring of the provider
    from hypercheckout.payments.settle import Payments

    store = await Store.connect(settings.database_url, size=3, timeout=settings.db_timeout)
    try:
        if args.action == "status":
            async with store.cursor() as cur:
                rows = await sql.money(cur)
            if args.json:
                print(json.dumps({"payments": [dataclasses.asdict(row) for row in rows]}, indent=2))
                return 0
            for row in rows:
                print(f"product {row.product_id}: {row.payment_status}: {row.checkouts} checkout(s), "
                      f"{row.units} unit(s), {row.amount} (minor units)")
            return 0
        if settings.payments == "off":
            print("hypercheckout: payments are off (HC_PAYMENTS)", file=sys.stderr)
            return 1
        provider = payment_provider(settings)
        try:
            payments = Payments(provider, store, replica="cli", grace=settings.payment_grace_s)
            outcomes = await payments.reconcile(limit=10_000)
        finally:
            await provider.close()
        print(json.dumps(outcomes) if args.json else
              ", ".join(f"{n} {outcome}" for outcome, n in sorted(outcomes.items())) or "nothing in doubt")
        return 0
    finally:
        await store.close()


def cmd_payments(args: argparse.Namespace, settings: Settings) -> int:
    return asyncio.run(_payments(settings, args))

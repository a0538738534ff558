"""Payments (issue 26): a checkout's hold is confirmed by its payment — Stripe's PaymentIntents with manual capture,
through the official ``stripe`` library, against Stripe itself or the local simulator (``simulator.py``)."""

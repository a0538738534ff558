"""`make chaos`'s parts: the plan a seed decides, the nemesis, the buyers' history, how unknown outcomes are
settled, and the checker that judges a history against PostgreSQL. ``load-tests/chaos.py`` runs them."""

"""The checkout domain: validation, errors and the purchase strategies."""

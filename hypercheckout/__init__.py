"""HyperCheckout: a flash-sale checkout service that never sells more than it has."""

__version__ = "0.1.0"

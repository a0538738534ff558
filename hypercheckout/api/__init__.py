"""The public JSON API: purchase, products, health."""

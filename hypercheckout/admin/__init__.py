"""The live admin dashboard: login, the page, its WebSocket feed, and the operator's actions."""

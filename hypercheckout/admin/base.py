"""What every admin handler shares: the signed session cookie, Jinja2 rendering, and XSRF on every POST."""

from __future__ import annotations

from typing import Any

import jinja2
import tornado.web

from hypercheckout.api.base import JsonHandler

SESSION_COOKIE = "hc_admin"
SESSION_DAYS = 1


class AdminHandler(JsonHandler):
    """Admin pages are HTML; their POSTs are checked for XSRF (JsonHandler switches that off for the API)."""

    def set_default_headers(self) -> None:
        super().set_default_headers()
        self.set_header("Content-Type", "text/html; charset=UTF-8")
        self.set_header("X-Frame-Options", "DENY")
        self.set_header("Referrer-Policy", "same-origin")
        self.set_header(
            "Content-Security-Policy",
            "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; frame-ancestors 'none'",
        )

    def check_xsrf_cookie(self) -> None:
        tornado.web.RequestHandler.check_xsrf_cookie(self)

    def get_current_user(self) -> str | None:
        value = self.get_signed_cookie(SESSION_COOKIE, max_age_days=SESSION_DAYS)
        return value.decode() if value else None

    def start_session(self) -> None:
        self.set_signed_cookie(SESSION_COOKIE, "admin", expires_days=SESSION_DAYS, httponly=True,
                               samesite="Strict", path="/admin")

    def end_session(self) -> None:
        self.clear_cookie(SESSION_COOKIE, path="/admin")

    def render_page(self, name: str, status: int = 200, **context: Any) -> None:
        environment: jinja2.Environment = self.application.settings["jinja"]
        html = environment.get_template(name).render(
            xsrf_form_html=self.xsrf_form_html, static_url=self.static_url, xsrf_token=self.xsrf_token.decode(),
            **context,
        )
        self.set_status(status)
        self.finish(html)

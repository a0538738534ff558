"""What every admin handler shares: the signed session cookie, Jinja2 rendering, and XSRF on every POST."""

from __future__ import annotations

from typing import Any

import jinja2
import tornado.web

from hypercheckout.api.base import JsonHandler

SESSION_COOKIE = "hc_admin"
SESSION_DAYS = 0.5  # 12 hours, then log in again (ASVS 4.0.3 3.3.2, level 2)
# No inline script or style anywhere: the page's data rides in data- attributes, its code in static files.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


def session_cookie(settings: Any) -> tuple[str, dict[str, Any]]:
    """The session cookie's name and attributes. Over https it is ``__Host-`` prefixed and Secure: the browser
    then refuses it from plain http and from any other host or path scope."""
    if settings.secure_cookies:
        return f"__Host-{SESSION_COOKIE}", {"secure": True, "path": "/"}
    return SESSION_COOKIE, {"path": "/admin"}


class AdminHandler(JsonHandler):
    """Admin pages are HTML; their POSTs are checked for XSRF (JsonHandler switches that off for the API)."""

    def set_default_headers(self) -> None:
        super().set_default_headers()
        self.set_header("Content-Type", "text/html; charset=UTF-8")
        self.set_header("X-Frame-Options", "DENY")
        self.set_header("Referrer-Policy", "no-referrer")
        self.set_header("Content-Security-Policy", CONTENT_SECURITY_POLICY)

    def check_xsrf_cookie(self) -> None:
        tornado.web.RequestHandler.check_xsrf_cookie(self)

    def get_current_user(self) -> str | None:
        name, _ = session_cookie(self.services.settings)
        value = self.get_signed_cookie(name, max_age_days=SESSION_DAYS)
        return value.decode() if value else None

    def start_session(self) -> None:
        name, attributes = session_cookie(self.services.settings)
        self.set_signed_cookie(name, "admin", expires_days=SESSION_DAYS, httponly=True, samesite="Strict",
                               **attributes)

    def end_session(self) -> None:
        name, attributes = session_cookie(self.services.settings)
        self.clear_cookie(name, **attributes)

    def render_page(self, name: str, status: int = 200, **context: Any) -> None:
        environment: jinja2.Environment = self.application.settings["jinja"]
        html = environment.get_template(name).render(
            xsrf_form_html=self.xsrf_form_html, static_url=self.static_url, xsrf_token=self.xsrf_token.decode(),
            **context,
        )
        self.set_status(status)
        self.finish(html)

"""GET/POST /admin/login and POST /admin/logout. Every attempt counts toward the client's rate limit."""

from __future__ import annotations

import hmac
import re

from hypercheckout.admin.base import AdminHandler

SAFE_NEXT = re.compile(r"/admin(/[A-Za-z0-9._~/-]*)?(\?[A-Za-z0-9._~=&%-]*)?")


class LoginHandler(AdminHandler):
    route = "/admin/login"

    def get(self) -> None:
        if self.current_user:
            self.redirect(self._next())
            return
        self.render_page("login.html", error=None, next=self._next())

    async def post(self) -> None:
        # Every attempt spends from the client's rate limit before the token is even compared, so guessing is
        # throttled, and a client that keeps guessing past HC_BAN_AFTER rejections is banned like any other.
        decision = await self.services.limiter.check(f"admin-login:{self.client_ip}", self.client_ip)
        if not decision.allowed:
            self.set_header("Retry-After", str(max(1, int(decision.retry_after + 0.999))))
            self.render_page("login.html", status=429, error="Too many attempts. Try again later.",
                             next=self._next())
            return
        token = self.get_body_argument("token", "")
        if not hmac.compare_digest(token.encode(), self.services.settings.admin_token.encode()):
            self.services.failed_logins += 1
            self.render_page("login.html", status=401, error="Wrong token.", next=self._next())
            return
        self.start_session()
        self.redirect(self._next(), status=303)

    def _next(self) -> str:
        target = self.get_argument("next", "/admin")
        # Only plain paths of the dashboard: "//evil.example" or "https://…" would turn login into an open
        # redirect, and a CR/LF would make the Location header itself raise.
        return target if SAFE_NEXT.fullmatch(target) else "/admin"


class LogoutHandler(AdminHandler):
    route = "/admin/logout"

    def post(self) -> None:
        self.end_session()
        self.redirect("/admin/login", status=303)

"""GET/POST /admin/login and POST /admin/logout. Failed logins are throttled per address and in total."""

from __future__ import annotations

import hmac
import re

from hypercheckout.admin.base import AdminHandler
from hypercheckout.login_throttle import ThrottleUnavailable
from hypercheckout.redisclient import CALL_FAILED

SAFE_NEXT = re.compile(r"/admin(/[A-Za-z0-9._~/-]*)?(\?[A-Za-z0-9._~=&%-]*)?")


class LoginHandler(AdminHandler):
    route = "/admin/login"

    def get(self) -> None:
        if self.current_user:
            self.redirect(self._next())
            return
        self.render_page("login.html", error=None, next=self._next())

    async def post(self) -> None:
        # The throttle is asked before the token is compared: a locked-out address learns nothing, not even
        # whether a guess was right.
        throttle, address = self.services.login_throttle, self.client_ip
        try:
            lockout = await throttle.attempt(address)
        except ThrottleUnavailable:
            self.render_page("login.html", status=503, next=self._next(),
                             error="Logins are closed for now: failed attempts cannot be counted (Redis is "
                                   "unreachable). Try again shortly.")
            return
        if lockout is not None:
            minutes = max(1, round(lockout.retry_after / 60))
            self.set_header("Retry-After", str(max(1, int(lockout.retry_after + 0.999))))
            who = "all addresses" if lockout.everyone else "this address"
            self.render_page("login.html", status=429, next=self._next(),
                             error=f"Too many failed logins from {who}. Try again in about {minutes} min.")
            return
        token = self.get_body_argument("token", "")
        if not hmac.compare_digest(token.encode(), self.services.settings.admin_token.encode()):
            self.services.failed_logins += 1  # already counted in Redis by the attempt
            self.render_page("login.html", status=401, error="Wrong token.", next=self._next())
            return
        try:
            await throttle.succeeded(address)
        except CALL_FAILED:
            pass  # the attempt stays counted until its window ends
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

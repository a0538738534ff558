"""The admin routes, concatenated into the application's route table by app.make_app."""

from hypercheckout.admin import api
from hypercheckout.admin.dashboard import ClearLimitsHandler, DashboardHandler, ResetHandler, UnbanHandler
from hypercheckout.admin.live import LiveSocket
from hypercheckout.admin.login import LoginHandler, LogoutHandler

default_handlers = [
    (r"/admin/?", DashboardHandler),
    (r"/admin/login", LoginHandler),
    (r"/admin/logout", LogoutHandler),
    (r"/admin/live", LiveSocket),
    (r"/admin/reset", ResetHandler),
    (r"/admin/unban", UnbanHandler),
    (r"/admin/clear-limits", ClearLimitsHandler),
    *api.default_handlers,
]

"""The admin routes, concatenated into the application's route table by app.make_app."""

from hypercheckout.admin import api
from hypercheckout.admin.dashboard import (
    ClearLimitsHandler,
    CreateProductHandler,
    DashboardHandler,
    DeleteProductHandler,
    ReleaseCheckoutHandler,
    ResetHandler,
    UnbanHandler,
    UpdateProductHandler,
)
from hypercheckout.admin.live import LiveSocket
from hypercheckout.admin.login import LoginHandler, LogoutHandler
from hypercheckout.api.checkouts import CHECKOUT_ID
from hypercheckout.api.products import PRODUCT_ID

default_handlers = [
    (r"/admin/?", DashboardHandler),
    (r"/admin/login", LoginHandler),
    (r"/admin/logout", LogoutHandler),
    (r"/admin/live", LiveSocket),
    (r"/admin/reset", ResetHandler),
    (r"/admin/unban", UnbanHandler),
    (r"/admin/clear-limits", ClearLimitsHandler),
    (rf"/admin/checkouts/{CHECKOUT_ID}/release", ReleaseCheckoutHandler),
    (r"/admin/products", CreateProductHandler),
    (rf"/admin/products/{PRODUCT_ID}", UpdateProductHandler),
    (rf"/admin/products/{PRODUCT_ID}/delete", DeleteProductHandler),
    *api.default_handlers,
]

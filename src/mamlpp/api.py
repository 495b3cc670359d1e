"""`mamlpp.api` is `mamlpp.apps.api` (the front-ends live together in mamlpp.apps); this name
stays for imports."""

import sys

from mamlpp.apps import api as _app

sys.modules[__name__] = _app

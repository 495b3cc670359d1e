"""`mamlpp.evaluate` is `mamlpp.apps.evaluate` (the front-ends live together in mamlpp.apps);
this name stays for imports, `python -m mamlpp.evaluate` and the console script."""

import sys

from mamlpp.apps import evaluate as _app

if __name__ == "__main__":
    _app.main()
else:
    sys.modules[__name__] = _app

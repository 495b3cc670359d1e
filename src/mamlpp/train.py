"""`mamlpp.train` is `mamlpp.apps.train` (the front-ends live together in mamlpp.apps); this name
stays for imports, `python -m mamlpp.train` and the console script."""

import sys

from mamlpp.apps import train as _app

if __name__ == "__main__":
    _app.main()
else:
    sys.modules[__name__] = _app

"""python -m foobar up [--web N] [--app N] [--base-port B] [--state-dir DIR] [--no-tls]"""

from __future__ import annotations

import sys

from foobar import up

if __name__ == "__main__":
    if sys.argv[1:2] != ["up"]:
        print("usage: " + (__doc__ or "").strip(), file=sys.stderr)
        sys.exit(2)
    sys.exit(up.main(sys.argv[2:]))

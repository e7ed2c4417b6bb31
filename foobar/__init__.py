"""foobar: the three-server web stack for www.foobar.com, in Python.

The load balancer (`foobar.lb`), the static-plus-proxy web tier (`foobar.web`), the
application (`foobar.app`) and the MySQL primary-replica cluster (`foobar.db`) each run as
their own process; `foobar.http`, `foobar.admin` and `foobar.settings` are what they share.
"""

__version__ = "0.1.0"

"""foobar.db: the MySQL/MariaDB primary-replica cluster on server 3, set up, replicated
and watched (settings.py, instance.py, replication.py, dialect.py, supervisor.py,
serve.py, cli.py)."""

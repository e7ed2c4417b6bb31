"""foobar.app: the www.foobar.com message board on server 2 (settings, models, schema,
dbrouter, posts, routes, serve)."""

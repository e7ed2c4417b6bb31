"""foobar.web: static files and the proxy to the app servers on server 2 (nginx's job):
settings, static, proxy, serve, and the site itself in site/."""

"""The peers' configurations, written to do the work foobar does, so that the comparison is
of like with like:

- HAProxy in http mode appends X-Forwarded-For (`option forwardfor`), sets
  X-Forwarded-Proto and adds a response header, as foobar.lb does with X-Foobar-LB;
- nginx proxying sets X-Forwarded-For/-Proto/-Host and X-Real-IP and adds a response
  header, as foobar.web does with X-Foobar-Web; serving files it adds that header and
  foobar's Cache-Control, and keeps open files' metadata (`open_file_cache`, valid as long
  as foobar trusts its cached small files);
- one process, one thread each (HAProxy `nbthread 1`, nginx `worker_processes 1` with
  `master_process off`, so the process whose CPU is read is the one that serves); no access
  log (foobar's main rows run with the access log off too).
"""

from __future__ import annotations

from pathlib import Path

# the node name foobar is started with, sent back in X-Foobar-LB / X-Foobar-Web; the
# peers add the same headers with the same value
NAME = "bench"


def haproxy(mode: str, port: int, backends: list[int]) -> str:
    servers = "".join(f"  server s{i} 127.0.0.1:{p}\n" for i, p in enumerate(backends))
    http = (
        "  option http-keep-alive\n  option forwardfor\n"
        "  http-request set-header X-Forwarded-Proto http\n"
        f"  http-response add-header X-Foobar-LB {NAME}\n"
        if mode == "http"
        else ""
    )
    return (
        "global\n  nbthread 1\n  maxconn 4096\n"
        f"defaults\n  mode {mode}\n  timeout connect 5s\n  timeout client 50s\n"
        f"  timeout server 50s\n"
        f"frontend f\n  bind 127.0.0.1:{port}\n{http}  default_backend b\n"
        f"backend b\n  balance roundrobin\n{servers}"
    )


def nginx(conf: Path, servers: str) -> str:
    """The text of `conf`: one nginx process serving `servers` (server and upstream
    blocks), its files next to `conf`."""
    temp = "".join(
        f"{kind}_temp_path {conf.parent};\n"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return (
        "worker_processes 1;\nmaster_process off;\ndaemon off;\n"
        f"pid {conf}.pid;\nerror_log /dev/null;\n"
        "events { worker_connections 4096; }\n"
        "http {\naccess_log off; sendfile on; etag on; keepalive_requests 100000;\n"
        f"{temp}{servers}}}\n"
    )


def nginx_backends(ports: list[int]) -> str:
    """The balancers' backends: "ok" from each port."""
    return "".join(
        f"server {{ listen 127.0.0.1:{port}; location / {{ return 200 'ok\\n'; }} }}\n"
        for port in ports
    )


def nginx_files(port: int, root: Path) -> str:
    return (
        f"server {{ listen 127.0.0.1:{port}; root {root};\n"
        f"  add_header X-Foobar-Web {NAME}; add_header Cache-Control no-cache;\n"
        "  open_file_cache max=1000 inactive=60s; open_file_cache_valid 1s; }\n"
    )


def nginx_proxy(port: int, upstream: int) -> str:
    # keepalive 128: foobar.web's pool keeps as many idle connections
    return (
        f"upstream app {{ server 127.0.0.1:{upstream}; keepalive 128; }}\n"
        f"server {{ listen 127.0.0.1:{port};\n"
        "  location /api/ { proxy_pass http://app; proxy_http_version 1.1;\n"
        "    proxy_set_header Connection '';\n"
        "    proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n"
        "    proxy_set_header X-Forwarded-Proto $scheme;\n"
        "    proxy_set_header X-Forwarded-Host $host;\n"
        "    proxy_set_header X-Real-IP $remote_addr;\n"
        f"    add_header X-Foobar-Web {NAME}; }} }}\n"
    )

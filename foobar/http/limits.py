"""Named limits and timeouts of the HTTP core, each with the precedent it follows.

These are defaults: every server and pool takes its own values, so a test can shrink them.
"""

from __future__ import annotations

# Request line plus header block. nginx: 1 KiB + 4 x 8 KiB large buffers; HAProxy: 16 KiB
# (tune.bufsize); Node: 16 KiB. 16 KiB admits real browsers with big cookies.
MAX_HEADER_BYTES = 16 * 1024

# Header fields in one head, whatever their size. HAProxy: 101 (tune.http.maxhdr);
# Apache: 100 (LimitRequestFields). Each is a Python object kept while the request lives.
MAX_HEADER_FIELDS = 100

# Request body. nginx's client_max_body_size is 1 MiB; the core's default is larger because
# the balancer must pass uploads through, and each tier sets its own.
MAX_BODY_BYTES = 64 * 1024 * 1024

# Whole request head must arrive within this. nginx client_header_timeout: 60 s;
# HAProxy's documented `timeout http-request` example: 10 s (slowloris defence).
REQUEST_TIMEOUT = 10.0

# Idle keep-alive connection. nginx keepalive_timeout: 75 s; HAProxy suggests 1-10 s.
KEEPALIVE_TIMEOUT = 15.0

# Silence between two reads of a request body. nginx client_body_timeout: 60 s.
BODY_TIMEOUT = 60.0

# A request body trickled in: body_timeout only bounds the silence between reads, so one
# byte a minute never ends. Apache's mod_reqtimeout: body=20,MinRate=500; HAProxy bounds
# the whole request with `timeout http-request`. After body_timeout, 500 bytes/s on
# average (a 1 MiB upload may take 35 minutes, a 64 MiB one 37 hours): generous.
BODY_MIN_RATE = 500.0

# A peer that does not read what we send. nginx send_timeout: 60 s.
SEND_TIMEOUT = 60.0

# Bytes buffered per connection before reading from the other side pauses. asyncio's own
# default write high-water mark is 64 KiB; the read side mirrors it.
HIGH_WATER = 64 * 1024
LOW_WATER = 16 * 1024

# Pieces a file is read in when it cannot go by sendfile (TLS, a full socket). nginx's
# output_buffers default: 2 x 32 KiB; larger pieces cost fewer loop turns here.
FILE_CHUNK = 256 * 1024

# An unread request body is read and dropped up to this size so the connection can be
# kept; past it the connection is closed (nginx discards, lingering, with a time bound).
DISCARD_BODY_BYTES = 64 * 1024

# Upstream pools. nginx proxy_connect_timeout / proxy_read_timeout: 60 s; HAProxy's
# documented examples: 5 s connect, 50 s server.
CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 60.0
# Idle connections kept per upstream. nginx's docs show `keepalive 16`/`32`; HAProxy keeps
# idle server connections without a count. More here: a loop turn sends a whole batch of
# requests at once, and a pool smaller than the requests in flight closes and reopens
# connections every turn (seen in the benchmark with 32 for 50 clients).
MAX_IDLE_CONNECTIONS = 128
# Below the common upstream keepalive timeouts (nginx 75 s, uvicorn 5 s is the outlier),
# so a pooled connection is dropped by us before the server drops it under us.
POOL_IDLE_TIMEOUT = 4.0

# A proxied response answered in callbacks (the fast path) is held whole until it has all
# arrived; a longer one streams from a task. nginx buffers a proxied response in memory up
# to proxy_buffer_size + proxy_buffers (4 KiB + 8 x 4 KiB by default) before spilling.
DIRECT_RESPONSE_BYTES = 64 * 1024

# Lingering close: how long unread input is drained after our FIN before closing, so the
# client reads our last response instead of a reset. nginx lingering_timeout: 5 s.
LINGER_TIMEOUT = 2.0

# How long graceful shutdown waits for in-flight requests. systemd's TimeoutStopSec: 90 s.
DRAIN_TIMEOUT = 30.0

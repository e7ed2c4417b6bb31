"""The live status page of the whole site: a diagram of the topology (balancer → web
servers → app servers → primary/replica), each node coloured by health with its request
and error rates (and, for the database, lag, semi-sync and epoch), and small charts of the
site's request rate and p99 latency over the last minutes.

    metrics.py    reading the roles' /metrics: counters, histograms, rates, quantiles
    collector.py  polling every role's admin listener, the history behind the charts
    server.py     the page (page/: plain HTML, SVG and JS, no build step) and its JSON
"""

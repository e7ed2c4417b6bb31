"""foobar.lb: the load balancer on server 1 (HAProxy's job): settings, algorithms,
servers, health, http_proxy, tcp_proxy, balancer, stats, serve."""

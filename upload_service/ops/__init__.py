"""Operating the service, apart from the domain: metrics, log configuration and the request
context of the logs, request ids and access lines, trusted proxies, the HTTP middleware, the heap
at start-up, and the server's draining protocol."""

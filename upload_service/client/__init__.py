"""The command-line tus client: ``upload-service upload``, ``status`` and ``download``.

A sync httpx client (the CLI is not the server; threads carry ``--parallel``), a resume store
of upload URLs, retries with backoff and progress on stderr. Nothing here imports the server.
"""

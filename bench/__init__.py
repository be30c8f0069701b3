"""The benchmark suite of upload_service: run it with ``bench/run`` (see ``bench/README.md``)."""

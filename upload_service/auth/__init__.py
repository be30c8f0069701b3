"""Who the caller is: bearer tokens (JWTs, static API keys) checked by an ``Authenticator``, and
signed download URLs. Only ``Principal`` (``auth/principal.py``, a leaf) reaches the tus handler."""

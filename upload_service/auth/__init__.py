"""Who the caller is: bearer tokens (JWTs, static API keys) checked by an ``Authenticator``, and
signed download URLs. Only ``Principal`` (``tus/request.py``) reaches the tus handler."""

# nginx for the compose stack test (tests/e2e/test_docker_compose.py), in place of
# docker-compose.yml's nginx:1.25, which no registry here can supply: Debian's nginx on the local
# debootstrap base, made to behave as the official image does where the stack relies on it: the
# sites in conf.d (Debian's default site, on port 80 of every address, removed), the logs to
# `docker logs`, curl for the health check, SIGQUIT to stop once running requests are done, in the
# foreground.
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
# policy-rc.d: the packages' scripts must not start nginx during the build (with the host's
# network it would listen on port 80 of the host).
RUN printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d \
    && chmod +x /usr/sbin/policy-rc.d \
    && apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends nginx curl \
    && rm -f /usr/sbin/policy-rc.d /etc/nginx/sites-enabled/default \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb \
    && ln -sf /dev/stdout /var/log/nginx/access.log \
    && ln -sf /dev/stderr /var/log/nginx/error.log \
    && nginx -t
STOPSIGNAL SIGQUIT
CMD ["nginx", "-g", "daemon off;"]

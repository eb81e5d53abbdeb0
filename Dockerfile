# stirshaken-proxy: slim, non-root, with a health check on the admin server.
FROM python:3.11-slim AS build
# gcc builds the compiled SIP core (parser, transactions, datagram path) and, with libssl-dev,
# its ES256 signer, and compiles the engine with mypyc (setup.py; pip fetches mypy for the
# build); without them the install falls back to Python and `cryptography`.
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev libssl-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY stirshaken_proxy ./stirshaken_proxy
RUN pip install --no-cache-dir --prefix=/install . \
    && python -c "import sys; sys.path.insert(0, '/install/lib/python3.11/site-packages'); \
from stirshaken_proxy.sip.message import compiled_available; assert compiled_available(); \
from stirshaken_proxy.stir.passport import compiled_signer_available as s; assert s(); \
from stirshaken_proxy.transaction.machine import COMPILED; assert COMPILED; \
from stirshaken_proxy.io.transports import CompiledUdpEndpoint; assert CompiledUdpEndpoint; \
import stirshaken_proxy.engine.proxy; from stirshaken_proxy import engine_core; \
assert engine_core() == 'compiled'"

FROM python:3.11-slim
COPY --from=build /install /usr/local
RUN useradd --system --uid 10001 --home-dir /var/lib/stirshaken --create-home stirshaken
COPY config/example.toml /etc/stirshaken/proxy.toml
# The example's development admin password, where its relative path finds it (WORKDIR).
COPY --chown=stirshaken config/dev-admin-password /var/lib/stirshaken/config/dev-admin-password
COPY deploy/docker-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
USER stirshaken
WORKDIR /var/lib/stirshaken
EXPOSE 5060/udp 5060/tcp 5061/tcp 5062/udp 5062/tcp 5064/udp 5064/tcp 8080/tcp 8090/tcp
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s \
  CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2)"
ENTRYPOINT ["docker-entrypoint.sh"]
CMD ["run", "--config", "/etc/stirshaken/proxy.toml"]

# shadow-router sidecar image: slim Python, non-root, uvloop, health check on /healthz.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY router ./router
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    ROUTER_CONFIG=/etc/shadow-router/router.yaml
RUN groupadd --system --gid 10001 router \
 && useradd --system --uid 10001 --gid router --home-dir /var/lib/shadow-router --create-home router
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
COPY configs/router.yaml /etc/shadow-router/router.yaml
WORKDIR /var/lib/shadow-router
USER 10001:10001
EXPOSE 8080
# config by mounted file (ROUTER_CONFIG) and environment (ROUTER_ADMIN_TOKEN, ROUTER_OUTCOMES_TOKEN)
HEALTHCHECK --interval=10s --timeout=2s --start-period=5s --retries=3 \
  CMD ["python", "-c", "import os,sys,urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('ROUTER_PORT', '8080'), timeout=2).status == 200 else 1)"]
ENTRYPOINT ["sh", "-c", "exec router serve -c \"$ROUTER_CONFIG\" --workers \"${ROUTER_WORKERS:-2}\""]

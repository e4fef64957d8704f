# One image for every app service in compose.yaml: worker, maintenance worker, beat, Flower,
# metrics exporter and the one-shot `embedder migrate`.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Only what runs in production: not .venv, .data, tests or bench (no .dockerignore needed).
COPY pyproject.toml README.md alembic.ini constraints.txt ./
COPY worker/ worker/
COPY tasks/ tasks/
COPY migrations/ migrations/

# Editable install on purpose: `embedder migrate` finds alembic.ini and migrations/ next to
# the worker package (worker/cli.py REPO_ROOT), and neither is part of the built wheel.
# Runtime dependencies only (no `local`/`dev` extras), at the versions CI tested:
# constraints.txt pins every version (`make lock`) without adding packages.
RUN pip install -c constraints.txt -e . \
    && useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin embedder \
    && mkdir -p /var/lib/embedder/beat /var/lib/embedder/metrics \
    && chown -R embedder /var/lib/embedder

# A named volume mounted on one of these paths starts with this ownership (compose.yaml).
USER embedder

CMD ["embedder", "--help"]

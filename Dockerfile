# The tradebook bot image. `docker compose up` builds and runs it next to PostgreSQL
# (docker-compose.yml, docs/operations.md); on its own it runs on the SQLite default.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

COPY pyproject.toml requirements.lock README.md ./
COPY tradebook ./tradebook
COPY dal ./dal
COPY bot ./bot
COPY strategies ./strategies
COPY trading ./trading
# A plain install at the versions requirements.lock pins; the migrations travel inside the
# dal package.
RUN pip install -c requirements.lock . && rm -rf /app/tradebook /app/dal /app/bot /app/strategies /app/trading

RUN useradd --create-home --uid 1000 tradebook \
    && mkdir -p /app/var /app/secrets \
    && chown -R tradebook /app/var /app/secrets
USER tradebook

# Migrate to head, then run the bot (the same two steps as `make run`).
CMD ["sh", "-c", "tradebook db upgrade && exec tradebook run"]

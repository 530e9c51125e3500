# The tradebook bot image. `docker compose up` builds and runs it next to PostgreSQL
# (docker-compose.yml, docs/operations.md); on its own it runs on the SQLite default.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

COPY pyproject.toml requirements.lock README.md alembic.ini ./
COPY migrations ./migrations
COPY tradebook ./tradebook
COPY dal ./dal
COPY bot ./bot
COPY strategies ./strategies
COPY trading ./trading
# Versions pinned by requirements.lock. Installed editable (as `make` does): dal/migrations.py
# finds alembic.ini and migrations/ next to the code.
RUN pip install -c requirements.lock -e .

RUN useradd --create-home --uid 1000 tradebook \
    && mkdir -p /app/var /app/secrets \
    && chown -R tradebook /app/var /app/secrets
USER tradebook

# Migrate to head, then run the bot (the same two steps as `make run`).
CMD ["sh", "-c", "tradebook db upgrade && exec tradebook run"]

# One image for every router process (API, Faust workers, migrations, topic setup, dashboard).
# Serving dependencies only: no torch. A trained classifier artifact is mounted and named by
# ROUTER_CLASSIFIER_ARTIFACT.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
RUN useradd --create-home --uid 10001 router

# Dependencies first, so code edits do not reinstall them.
COPY pyproject.toml README.md ./
RUN mkdir -p core ingest stream_processors classifier providers training dashboard sql stack \
    && pip install '.[dashboard]' && pip uninstall -y cost-router

COPY . .
RUN pip install --no-deps '.[dashboard]' && mkdir -p /app/.data && chown -R router /app/.data

USER router
EXPOSE 8000 8501
CMD ["python", "-m", "ingest", "--host", "0.0.0.0", "--port", "8000"]

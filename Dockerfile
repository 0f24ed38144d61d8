# One image for every agentsched process: the five apps' APIs and their workers
# (compose.yaml picks the command). Build: docker build -t agentsched .
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY agentsched ./agentsched
RUN pip install .

COPY config ./config
COPY apps ./apps

# The apps' data dirs exist in the image, so compose's named volumes start owned by the user.
RUN useradd --system --uid 10001 agentsched \
    && mkdir -p /data/aiops-bot /data/email-agent /data/rag-chat /data/scraper-agent \
                /data/support-bot \
    && chown -R agentsched /data
USER agentsched

EXPOSE 8000
# compose.yaml sets the command; alone, the image serves the scheduler API of AGENTSCHED_APP.
CMD ["uvicorn", "agentsched.api:create_app", "--factory", "--host", "0.0.0.0", "--port", "8000", "--timeout-graceful-shutdown", "5"]

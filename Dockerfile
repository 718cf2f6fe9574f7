# The stageroute CLI (worker, publish, topics, backtest, audit) for docker-compose.yml.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
# Dependencies first, so a code change does not reinstall them.
COPY pyproject.toml README.md ./
COPY schemas ./schemas
COPY solvers ./solvers
COPY streams ./streams
COPY stageroute ./stageroute
COPY migrations ./migrations
RUN pip install .

# Never root at run time; the worker needs no file system writes besides faust's datadir.
RUN useradd --create-home --uid 10001 stageroute
USER stageroute
WORKDIR /home/stageroute
ENTRYPOINT ["stageroute"]
CMD ["--help"]

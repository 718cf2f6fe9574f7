# The stageroute CLI (worker, publish, topics, backtest, audit) for docker-compose.yml.
# Built with the compiled engine (setup.py), which needs a C compiler; the image that runs
# does not.
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY schemas ./schemas
COPY solvers ./solvers
COPY streams ./streams
COPY stageroute ./stageroute
COPY migrations ./migrations
RUN STAGEROUTE_COMPILE=1 pip wheel --no-deps --wheel-dir /wheels .

FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY --from=build /wheels /wheels
RUN pip install /wheels/*.whl && rm -rf /wheels

# Never root at run time; the worker needs no file system writes besides faust's datadir.
RUN useradd --create-home --uid 10001 stageroute
USER stageroute
WORKDIR /home/stageroute
ENTRYPOINT ["stageroute"]
CMD ["--help"]

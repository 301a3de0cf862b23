# One image for every serviceloop process; the command chooses which, e.g.
#   nameko run --config /app/config.yaml services.orders.service:OrdersService
#   serviceloop relay orders
#   serviceloop migrate --services orders
# No secrets here: the database and broker credentials come from Kubernetes Secrets at run time.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    LOG_FORMAT=json \
    SERVICELOOP_VAR=/tmp/serviceloop

WORKDIR /app
COPY pyproject.toml ./
COPY contracts ./contracts
COPY serviceloop ./serviceloop
COPY services ./services
# the project without its dev extras; the source tree is not needed once installed
RUN pip install . && rm -rf contracts serviceloop services build *.egg-info
COPY config.yaml /app/config.yaml

RUN useradd --system --uid 10001 --no-create-home --home-dir /nonexistent serviceloop
USER 10001

EXPOSE 8080
CMD ["serviceloop", "--help"]

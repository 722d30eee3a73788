# gitops-rollout daemon image: `docker build -t gitops-rollout .`
# Build stage: install the package and its dependencies into a virtualenv.
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gitops_rollout ./gitops_rollout
RUN python -m venv /opt/gitops-rollout \
 && /opt/gitops-rollout/bin/pip install .

# Runtime stage: git for gitpython, the virtualenv, a non-root user, nothing else.
FROM python:3.11-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends git openssh-client ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --uid 10001 --user-group --no-create-home --home-dir /var/lib/gitops-rollout \
      --shell /usr/sbin/nologin gitops-rollout \
 && install -d -o 10001 -g 10001 /var/lib/gitops-rollout
COPY --from=build /opt/gitops-rollout /opt/gitops-rollout
ENV PATH=/opt/gitops-rollout/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/var/lib/gitops-rollout \
    GITOPS_ROLLOUT_LISTEN=0.0.0.0:8080
WORKDIR /var/lib/gitops-rollout
USER 10001:10001
EXPOSE 8080
ENTRYPOINT ["gitops-rollout", "run"]

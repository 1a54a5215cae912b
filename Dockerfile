# One image for the API (default command) and the worker (`celery -A worker.celery_app worker ...`).
#   docker build -t finetune .                                   # CUDA TensorFlow, VGG16 weights
#   docker build --build-arg VARIANT=cpu --build-arg BACKBONES="vgg16 mobilenet:0.25" -t finetune:cpu .
#   make image [VARIANT=gpu] [BACKBONES=...] [WEIGHTS_DIR=folder]  # the same with podman/buildah or docker
# Every Python package comes from the hash-locked requirements/<VARIANT>.txt (`make lock` writes it).
# Weight files placed in weights/ (build context) are used as they are: no download for those backbones.

FROM python:3.11-slim AS builder

ARG VARIANT=gpu
ARG BACKBONES=vgg16

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    KERAS_HOME=/opt/keras \
    TF_CPP_MIN_LOG_LEVEL=2

RUN python -m venv /opt/venv
WORKDIR /src

# Dependencies first (cached until the lock changes): the variant's lock names the same packages as
# requirements/dev.txt's run-time part, with TensorFlow as the variant's wheel (tensorflow-cpu, or
# tensorflow with its CUDA wheels), each with its hashes; pip, setuptools and wheel come from it too.
COPY requirements/cpu.txt requirements/gpu.txt requirements/
RUN case "$VARIANT" in \
        cpu|gpu) ;; \
        *) echo "VARIANT must be gpu or cpu, got '$VARIANT'" >&2; exit 1 ;; \
    esac \
 && pip install --require-hashes -r "requirements/$VARIANT.txt"

# ImageNet weights: files given in weights/ first (Keras finds them and downloads nothing), then the
# backbones in BACKBONES that are still missing are fetched (BACKBONES=none: nothing).
COPY weights/ $KERAS_HOME/models/
COPY scripts/fetch_weights.py scripts/
RUN python scripts/fetch_weights.py $BACKBONES

COPY . .
RUN pip install --no-deps --no-build-isolation .


FROM python:3.11-slim

ARG VARIANT=gpu
LABEL org.opencontainers.image.title="finetune-service" \
      org.opencontainers.image.description="Fine-tuning service: API and Celery worker" \
      finetune.variant="$VARIANT"

ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    KERAS_HOME=/opt/keras \
    MODEL_DIR=/srv/models \
    DATA_DIR=/srv/data \
    PORT=8000

RUN groupadd --system --gid 10001 app \
 && useradd --system --uid 10001 --gid app --create-home --home-dir /home/app app \
 && mkdir -p /srv/models /srv/data \
 && chown app:app /srv/models /srv/data

COPY --from=builder /opt/venv /opt/venv
COPY --from=builder --chown=app:app /opt/keras /opt/keras

USER 10001:10001
WORKDIR /home/app
EXPOSE 8000

HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PORT', '8000'), timeout=4)"]

CMD ["python", "-m", "app.server"]

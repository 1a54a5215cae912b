# One image for the API (default command) and the worker (`celery -A worker.celery_app worker ...`).
#   docker build -t finetune .                                   # CUDA TensorFlow, VGG16 weights
#   docker build --build-arg VARIANT=cpu --build-arg BACKBONES="vgg16 mobilenet:0.25" -t finetune:cpu .

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

# Dependencies first (cached until pyproject.toml changes). TensorFlow is swapped for the
# variant's wheel; the project itself is then installed with --no-deps so that
# `tensorflow-cpu` is not joined by the full `tensorflow` the pyproject names.
COPY pyproject.toml ./
RUN case "$VARIANT" in \
        gpu) tf="tensorflow[and-cuda]==2.21.0" ;; \
        cpu) tf="tensorflow-cpu==2.21.0" ;; \
        *) echo "VARIANT must be gpu or cpu, got '$VARIANT'" >&2; exit 1 ;; \
    esac \
 && python -c "import re, tomllib; deps = tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']; print('\n'.join(d for d in deps if re.split(r'[^A-Za-z0-9_.-]', d)[0].lower() != 'tensorflow'))" > /tmp/requirements.txt \
 && pip install "$tf" -r /tmp/requirements.txt

COPY scripts/fetch_weights.py scripts/
RUN mkdir -p "$KERAS_HOME/models" && python scripts/fetch_weights.py $BACKBONES

COPY . .
RUN pip install --no-deps .


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

CMD ["sh", "-c", "exec uvicorn app.main:app --host 0.0.0.0 --port ${PORT:-8000}"]

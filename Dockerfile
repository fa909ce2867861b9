# One image for the API and the workers (docker-compose.yml runs it both ways).
# PyPI's Linux torch wheels bundle the CUDA runtime: on a host with the NVIDIA container toolkit
# the worker trains on the GPU, and without one everything runs on the CPU.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    CLASSCOMP_HOME=/var/lib/classcomp

WORKDIR /app

# Dependencies first, in their own layer: editing the code does not reinstall torch.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt

COPY README.md ./
COPY ml ml
COPY service service
COPY workers workers
RUN pip install --no-deps . && useradd --create-home --uid 1000 classcomp \
    && mkdir -p "$CLASSCOMP_HOME" && chown classcomp "$CLASSCOMP_HOME"
USER classcomp

EXPOSE 8000
CMD ["classcomp", "serve", "--host", "0.0.0.0"]

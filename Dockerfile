# One image for the API and the workers (docker-compose.yml runs it both ways).
# By default torch comes from PyPI, whose Linux wheels bundle a CUDA runtime: a worker given a GPU
# (docker-compose.gpu.yml) trains on it, and without one it runs on the CPU. That runtime needs a
# recent enough NVIDIA driver; for an older one, build from PyTorch's index of an older CUDA:
#   docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cuXYZ .
# (the CUDA versions of each torch release are listed on pytorch.org).
# The API never trains, so docker-compose.yml builds its image from the CPU-only index, without
# the gigabytes of CUDA libraries: --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
FROM python:3.11-slim

ARG TORCH_INDEX_URL=https://pypi.org/simple

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    CLASSCOMP_HOME=/var/lib/classcomp

WORKDIR /app

# Dependencies first, in their own layer: editing the code does not reinstall torch. torch and
# torchvision are the versions the tests ran with (pyproject.toml keeps a range for other installs);
# already installed, they satisfy the requirements below, which leave them alone.
COPY pyproject.toml ./
RUN pip install --index-url "$TORCH_INDEX_URL" torch==2.14.1 torchvision==0.29.1 \
    && python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt

COPY README.md ./
COPY classcomp classcomp
COPY ml ml
COPY service service
COPY workers workers
# /artifacts and /data are the mount points of docker-compose.yml's volumes: Docker gives a new
# named volume the owner of the directory it is mounted on, so they must belong to the runtime user
# for the worker to save models and download MNIST.
RUN pip install --no-deps . && useradd --create-home --uid 1000 classcomp \
    && mkdir -p "$CLASSCOMP_HOME" /artifacts /data \
    && chown classcomp:classcomp "$CLASSCOMP_HOME" /artifacts /data
USER classcomp

EXPOSE 8000
CMD ["classcomp", "serve", "--host", "0.0.0.0"]

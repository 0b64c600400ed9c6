FROM python:3.11-slim
WORKDIR /app
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
# Requests run in parallel and multiply small matrices: one BLAS thread each serves them better (bench/api_load.py:
# 57.8 -> 70.5 req/s at 8 clients on 2 cores). `persona serve` sets this itself when it is unset.
ENV OPENBLAS_NUM_THREADS=1
# CPU wheels by default; the compose `gpu` profile builds with TORCH_INDEX=.../whl/cu124 for CUDA.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
RUN pip install --index-url ${TORCH_INDEX} torch torchvision
COPY pyproject.toml README.md ./
COPY engine engine
COPY indexers indexers
COPY prompts prompts
COPY services services
RUN pip install '.[all]'
EXPOSE 8080
CMD ["persona", "serve", "--host", "0.0.0.0", "--port", "8080"]

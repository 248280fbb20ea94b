#!/usr/bin/env bash
# Here (with network): the cp312 wheels the GPU machine lacks (onnxruntime-gpu and the serving
# dependencies), in one compressed archive split into parts small enough for one device call each
# (64 MiB per call, the working tree included), with a MANIFEST of sha256 sums that
# deploy/gpu/install_wheels.sh checks there. docs/gpu.md says how the parts travel.
#
#   deploy/gpu/pack_wheels.sh                      # download, pack into gpu-wheels/
#   deploy/gpu/pack_wheels.sh --wheels DIR         # pack the wheels already in DIR (no network)
#
# Options: --out DIR (default gpu-wheels, git-ignored), --part-mib N (largest part, default 55),
# --codec auto|xz|zstd (auto: both, the smaller wins; xz on a tie within 2%, because Python's
# lzma module decompresses it where no xz binary is), --python-version (default 3.12).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT=$ROOT/gpu-wheels
WHEELS=
PART_MIB=55
CODEC=auto
PYVER=3.12
ARCHIVE_NAME=coordconv-gpu-wheels.tar
# The interpreter whose installed versions pin the download: the tested set (.venv).
VENV_PY=${VENV_PY:-$ROOT/.venv/bin/python}
[ -x "$VENV_PY" ] || VENV_PY=python3

while [ $# -gt 0 ]; do
  case $1 in
    --out) OUT=$2; shift 2 ;;
    --wheels) WHEELS=$2; shift 2 ;;
    --part-mib) PART_MIB=$2; shift 2 ;;
    --part-bytes) PART_BYTES=$2; shift 2 ;;  # tests: tiny parts
    --codec) CODEC=$2; shift 2 ;;
    --python-version) PYVER=$2; shift 2 ;;
    -h|--help) awk 'NR > 1 && !/^#/ {exit} NR > 1' "$0"; exit 0 ;;
    *) echo "pack_wheels: unknown option $1" >&2; exit 2 ;;
  esac
done
PART_BYTES=${PART_BYTES:-$((PART_MIB * 1024 * 1024))}

# What the GPU machine lacks (docs/gpu.md, TOOLS.md "The GPU machine"): onnxruntime-gpu, the
# service's web stack, tritonclient (the service reads Triton's config protobufs through it) and
# its imports. grpcio and protobuf are there, but in versions nobody has seen: the generated code
# of grpcio-health-checking and tritonclient checks both at import, so the tested ones travel.
PACKAGES=(
  onnxruntime-gpu
  fastapi starlette fastapi-offline annotated-doc
  pydantic pydantic-core pydantic-settings annotated-types typing-inspection typing-extensions
  python-dotenv
  uvicorn httptools click
  orjson python-multipart opentelemetry-api nvidia-ml-py
  tritonclient python-rapidjson ml-dtypes urllib3
  grpcio grpcio-health-checking grpcio-reflection protobuf
)

started=$(date +%s)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/dl" "$work/stored"

if [ -z "$WHEELS" ]; then
  specs=()
  for name in "${PACKAGES[@]}"; do
    version=$("$VENV_PY" -c "import importlib.metadata as m, sys
try: print(m.version(sys.argv[1]))
except m.PackageNotFoundError: pass" "$name" 2>/dev/null || true)
    specs+=("$name${version:+==$version}")
  done
  echo "pack_wheels: downloading ${#specs[@]} cp${PYVER/./} wheels: ${specs[*]}"
  "$VENV_PY" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
    --python-version "$PYVER" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 \
    -d "$work/dl" "${specs[@]}" 2> >(grep -v "is ignored: it is neither" >&2)
  WHEELS=$work/dl
fi
shopt -s nullglob
wheels=("$WHEELS"/*.whl)
[ ${#wheels[@]} -gt 0 ] || { echo "pack_wheels: no .whl files in $WHEELS" >&2; exit 1; }
downloaded=$(date +%s)

# Wheels are zip files already deflated: compressing them again gains little. Rewritten with the
# members stored (same files, same names), the compressor sees the raw bytes.
"$VENV_PY" - "$work/stored" "${wheels[@]}" <<'EOF'
import sys, zipfile
from pathlib import Path
out = Path(sys.argv[1])
for wheel in map(Path, sys.argv[2:]):
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(out / wheel.name, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            body = src.read(info)  # before the type changes: read() decompresses by it
            info.compress_type = zipfile.ZIP_STORED
            dst.writestr(info, body)
EOF
tar -C "$work/stored" -cf "$work/$ARCHIVE_NAME" .
raw_bytes=$(stat -c %s "$work/$ARCHIVE_NAME")

compress() {  # codec -> prints the compressed file's path
  case $1 in
    xz) xz -9 -T1 -c "$work/$ARCHIVE_NAME" >"$work/$ARCHIVE_NAME.xz" && echo "$work/$ARCHIVE_NAME.xz" ;;
    zstd) zstd -q -19 --long=27 -c "$work/$ARCHIVE_NAME" >"$work/$ARCHIVE_NAME.zst" \
      && echo "$work/$ARCHIVE_NAME.zst" ;;
  esac
}
case $CODEC in
  xz|zstd) archive=$(compress "$CODEC") ;;
  auto)
    if command -v zstd >/dev/null; then
      # Both at once: two cores, one each.
      compress xz >/dev/null & xz_pid=$!
      compress zstd >/dev/null
      wait "$xz_pid"
      xz_bytes=$(stat -c %s "$work/$ARCHIVE_NAME.xz")
      zst_bytes=$(stat -c %s "$work/$ARCHIVE_NAME.zst")
      echo "pack_wheels: xz -9 $xz_bytes bytes, zstd -19 --long=27 $zst_bytes bytes"
      if [ $((zst_bytes * 100)) -lt $((xz_bytes * 98)) ]; then
        archive=$work/$ARCHIVE_NAME.zst
      else
        archive=$work/$ARCHIVE_NAME.xz
      fi
    else
      archive=$(compress xz)
    fi ;;
  *) echo "pack_wheels: --codec is auto, xz or zstd" >&2; exit 2 ;;
esac
bytes=$(stat -c %s "$archive")
name=$(basename "$archive")

rm -rf "$OUT"
mkdir -p "$OUT"
# Equal parts, each at most PART_BYTES: as few device calls as the limit allows, none fuller
# than it needs to be.
parts=$(( (bytes + PART_BYTES - 1) / PART_BYTES ))
split -n "$parts" -d -a 2 "$archive" "$OUT/$name.part-"
{
  echo "# deploy/gpu/pack_wheels.sh $(date -u +%Y-%m-%dT%H:%M:%SZ): $parts parts of $name"
  echo "# kind name sha256 bytes; deploy/gpu/install_wheels.sh checks every line"
  echo "archive $name $(sha256sum "$archive" | cut -d' ' -f1) $bytes"
  for part in "$OUT/$name".part-*; do
    echo "part $(basename "$part") $(sha256sum "$part" | cut -d' ' -f1) $(stat -c %s "$part")"
  done
  for wheel in "${wheels[@]}"; do
    echo "wheel $(basename "$wheel") $(sha256sum "$wheel" | cut -d' ' -f1) $(stat -c %s "$wheel")"
  done
} >"$OUT/MANIFEST"
done_at=$(date +%s)
echo "pack_wheels: ${#wheels[@]} wheels, $raw_bytes bytes stored, $name $bytes bytes," \
  "$parts parts in $OUT (download $((downloaded - started)) s, pack $((done_at - downloaded)) s)"
ls -l "$OUT"

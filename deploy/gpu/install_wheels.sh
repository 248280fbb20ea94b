#!/usr/bin/env bash
# There (the GPU machine, no network): join the parts that deploy/gpu/pack_wheels.sh made, check
# every sha256 in their MANIFEST, decompress and install the wheels with
# `pip install --no-deps --target`, then print the environment to use, last line:
#
#   export PYTHONPATH=<target>... LD_LIBRARY_PATH=<nvidia lib folders>...
#
# (also written to <target>/env.sh, for later calls on the same machine).
#
#   deploy/gpu/install_wheels.sh [--parts DIR] [--target DIR]
#
# --parts: the folder holding MANIFEST and the parts (default /tmp/gpu-wheels); --target: where
# the packages go (default /tmp/gpu-site). A missing or damaged part is refused with one line,
# before anything is installed. PYTHON picks the interpreter (default python3).
set -euo pipefail

PARTS=/tmp/gpu-wheels
TARGET=/tmp/gpu-site
PY=${PYTHON:-python3}
while [ $# -gt 0 ]; do
  case $1 in
    --parts) PARTS=$2; shift 2 ;;
    --target) TARGET=$2; shift 2 ;;
    -h|--help) awk 'NR > 1 && !/^#/ {exit} NR > 1' "$0"; exit 0 ;;
    *) echo "install_wheels: unknown option $1" >&2; exit 2 ;;
  esac
done
refuse() { echo "install_wheels: $*" >&2; exit 1; }

manifest=$PARTS/MANIFEST
[ -f "$manifest" ] || refuse "no MANIFEST in $PARTS (carry gpu-wheels/MANIFEST with the parts)"
started=$(date +%s)
archive='' archive_sum='' parts=()
while read -r kind name sum _size; do
  case $kind in
    archive) archive=$name archive_sum=$sum ;;
    part)
      [ -f "$PARTS/$name" ] || refuse "part $name is missing from $PARTS: carry it again"
      got=$(sha256sum "$PARTS/$name" | cut -d' ' -f1)
      [ "$got" = "$sum" ] || refuse "part $name has sha256 $got, MANIFEST says $sum: carry it again"
      parts+=("$PARTS/$name") ;;
  esac
done <"$manifest"
[ -n "$archive" ] && [ ${#parts[@]} -gt 0 ] || refuse "MANIFEST in $PARTS lists no archive or no parts"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cat "${parts[@]}" >"$work/$archive"
got=$(sha256sum "$work/$archive" | cut -d' ' -f1)
[ "$got" = "$archive_sum" ] || refuse "joined $archive has sha256 $got, MANIFEST says $archive_sum"

# The binaries where they exist; Python's lzma module where xz does not (zstd has no such
# fallback before Python 3.14: the pack script prefers xz unless zstd saves more than 2%).
mkdir -p "$work/wheels"
case $archive in
  *.xz)
    if command -v xz >/dev/null; then
      xz -dc "$work/$archive" | tar -x -C "$work/wheels"
    else
      "$PY" -c "import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), sys.stdout.buffer)" \
        "$work/$archive" | tar -x -C "$work/wheels"
    fi ;;
  *.zst)
    command -v zstd >/dev/null || refuse "$archive needs zstd, which is not installed here"
    zstd -q -dc --long=27 "$work/$archive" | tar -x -C "$work/wheels" ;;
  *) refuse "$archive: unknown compression" ;;
esac
rm -f "$work/$archive"

shopt -s nullglob
wheels=("$work"/wheels/*.whl)
[ ${#wheels[@]} -gt 0 ] || refuse "$archive holds no wheels"
mkdir -p "$TARGET"
if "$PY" -m pip --version >/dev/null 2>&1; then
  # --no-compile: onnxruntime's many tool modules would take longer to compile than to install.
  PIP_ROOT_USER_ACTION=ignore "$PY" -m pip install -q --disable-pip-version-check --no-index --no-deps --no-compile \
    --upgrade --target "$TARGET" "${wheels[@]}"
else
  # No pip there: a wheel's install into a --target folder is its unpacking, with the
  # <name>.data/purelib and platlib trees moved to the top (scripts and headers are not needed).
  echo "install_wheels: no pip for $PY: unpacking the wheels"
  "$PY" - "$TARGET" "${wheels[@]}" <<'UNPACK'
import shutil, sys, zipfile
from pathlib import Path
target = Path(sys.argv[1])
for wheel in sys.argv[2:]:
    with zipfile.ZipFile(wheel) as z:
        z.extractall(target)
for data in target.glob("*.data"):
    for tree in ("purelib", "platlib"):
        if (data / tree).is_dir():
            shutil.copytree(data / tree, target, dirs_exist_ok=True)
    shutil.rmtree(data)
UNPACK
fi

# The CUDA and cuDNN pip packages' lib folders, for the dynamic loader (benchmarks/gpu.py adds
# them itself; the line below is for anything else run there, e.g. `coordconv serve`).
libs=$("$PY" - <<'EOF'
import sys
from pathlib import Path
dirs = []
for entry in sys.path:
    base = Path(entry or ".") / "nvidia"
    for lib in sorted(base.glob("*/lib")) + sorted(base.glob("*/*/lib")) if base.is_dir() else []:
        if any(lib.glob("lib*.so*")) and str(lib) not in dirs:
            dirs.append(str(lib))
print(":".join(dirs))
EOF
)
echo "install_wheels: ${#wheels[@]} wheels into $TARGET in $(($(date +%s) - started)) s"
line="export PYTHONPATH=$TARGET\${PYTHONPATH:+:\$PYTHONPATH}"
if [ -n "$libs" ]; then
  line="$line LD_LIBRARY_PATH=$libs\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
fi
echo "$line" >"$TARGET/env.sh"  # for a later call on the same machine: . /tmp/gpu-site/env.sh
echo "$line"

#!/usr/bin/env bash
# Prepares what bench/gpu.sh needs on a bare lent GPU machine (no registry, no network there), HERE:
#   .whl/site-py312.tar.xz   the Python packages the device image lacks (MLflow skinny + its SQL store,
#                            DVC, PyAV), installed for CPython 3.12 x86-64 into one folder, extension
#                            modules stripped of debug info, xz-compressed (the plain wheels are 64 MB:
#                            they would not fit the 64 MiB that travels with the data)
#   .gpu-data/BSDS300/       the byte-exact BSDS300 copy (the download stage verifies its content hash)
#   .gpu-data/sets.tar.xz    Set5 and Set14 (the original BMPs)
#   .gpu-data/BSD100.pixels.sha256  BSD100 is not carried: its 100 PNGs are BSDS300's test images
#                            (sorted by id) cropped to even sizes from the top-left corner, pixel for
#                            pixel (checked here); gpu.sh rebuilds them and checks these pixel hashes
# Both folders are ignored through .git/info/exclude and travel as `carry: [".whl", ".gpu-data"]`.
#
# Usage, from anywhere:  bash bench/gpu_prepare.sh
#   SHARED=../shared/datasets   where the data sets are           PIP="python3 -m pip"   the pip to use
#   PYTHON=.venv/bin/python     a Python with numpy and Pillow (for the BSD100 check)
# Needs network to PyPI (pip), xz, strip. Downloads go to .gpu-build/ (ignored, does not travel).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"
SHARED=${SHARED:-$REPO/../shared/datasets}
PIP=${PIP:-python3 -m pip}
PYTHON=${PYTHON:-$REPO/.venv/bin/python}
LIMIT=$((64 * 1024 * 1024))

# What the device image lacks, with the versions of the project's .venv (closure of mlflow-skinny,
# SQLAlchemy, alembic, dvc and av minus the packages KINDS.md lists for the 'cuda' image).
# Regenerate when pyproject.toml's dependencies change.
PACKAGES="
aiohttp-retry==2.9.1 alembic==1.20.1 amqp==5.4.2 annotated-types==0.8.0 appdirs==1.4.4
asyncssh==2.24.1 atpublic==9.0.0 av==18.1.0 billiard==4.3.2 cachetools==7.3.3 celery==5.7.0
cffi==2.1.1 click-didyoumean==0.3.1 click-plugins==1.1.1.2 click-repl==0.4.1 configobj==5.0.9
cryptography==50.0.2 databricks-sdk==0.162.0 dictdiffer==0.10.0 diskcache==5.6.3 distro==1.9.0
dpath==2.2.0 dulwich==1.2.21 dvc-data==3.18.3 dvc-http==2.32.0 dvc-objects==5.2.0 dvc-render==1.0.2
dvc-studio-client==0.23.0 dvc-task==0.40.2 dvc==3.67.1 entrypoints==0.4.2 fastapi==0.165.0
flatten-dict==0.5.0 flufl.lock==9.2.0 funcy==2.1 gitdb==4.0.12 GitPython==3.2.1 google-auth==2.63.0
grandalf==0.8 gto==1.10.1 hydra-core==1.3.8 importlib_metadata==9.1.0 iterative-telemetry==0.0.10
kombu==5.7.0 Mako==1.4.3 mlflow-skinny==3.17.2 omegaconf==2.3.1 opentelemetry-api==1.45.2
opentelemetry-proto==1.45.2 opentelemetry-sdk==1.45.2 opentelemetry-semantic-conventions==0.66b2
orjson==3.13.0 platformdirs==4.14.8 prompt_toolkit==3.0.53 pyasn1==0.6.5 pyasn1_modules==0.4.2
pycparser==3.12 pydantic-settings==2.16.3 pydantic==2.14.4 pydantic_core==2.50.5 pydot==4.0.1
pygit2==1.21.0 pygtrie==2.6.2 python-dotenv==1.2.4 ruamel.yaml==0.19.1 scmrepo==3.6.2 semver==3.1.2
shortuuid==1.0.13 shtab==1.13.0 smmap==5.0.3 SQLAlchemy==2.1.9 sqlparse==0.6.1 sqltrie==0.11.3
starlette==1.10.0 tomlkit==0.15.2 typing-inspection==0.4.5 tzlocal==5.4.5 uvicorn==0.54.0 vine==5.1.0
voluptuous==0.16.0 wcwidth==0.9.4 zc.lockfile==4.0
"
# Carried for gpu.sh to use only where the image's own are older: MLflow's and OpenTelemetry's generated
# protobuf code needs protobuf >= 5.26, pydantic-core typing_extensions >= 4.14.1 (site/_fallback/)
FALLBACK="protobuf==7.36.2 typing_extensions==4.16.0"
# DROP="pygit2 ..." leaves packages out (pygit2, 3.3 MB packed, is DVC's git backend: unused with
# core.no_scm, which gpu.sh sets; the first thing to drop if the 64 MiB get tight)
DROP=${DROP:-}
SDIST_ONLY="antlr4-python3-runtime==4.9.3"  # hydra-core/omegaconf pin 4.9.*: no wheel on PyPI, built here (pure Python)
PLATFORMS="--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_26_x86_64
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64"
TARGET="--only-binary=:all: --python-version 3.12 --implementation cp $PLATFORMS"

exclude=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$exclude")"
for p in /.whl/ /.gpu-data/ /.gpu-build/; do
  grep -qxF "$p" "$exclude" 2>/dev/null || echo "$p" >>"$exclude"
done

echo "== wheels (.gpu-build/wheels)"
mkdir -p .gpu-build/wheels .whl .gpu-data
for req in $PACKAGES; do
  name=${req%%==*}; version=${req##*==}
  if [[ " $DROP " == *" $name "* ]]; then rm -f .gpu-build/wheels/"$(echo "$name" | tr 'A-Z.-' 'a-z__')"-*.whl; continue; fi
  norm=$(echo "$name" | tr 'A-Z.-' 'a-z__')
  if ls .gpu-build/wheels | tr 'A-Z.-' 'a-z__' | grep -q "^${norm}_${version//[.-]/_}_"; then continue; fi
  $PIP download -q --no-deps $TARGET -d .gpu-build/wheels "$req"
done
for req in $SDIST_ONLY; do
  norm=$(echo "${req%%==*}" | tr 'A-Z.-' 'a-z__')
  ls .gpu-build/wheels | grep -qi "^${norm}-" || $PIP wheel -q --no-deps -w .gpu-build/wheels "$req"
done
mkdir -p .gpu-build/fallback
for req in $FALLBACK; do
  ls .gpu-build/fallback | grep -qi "^${req%%==*}-${req##*==}-" || $PIP download -q --no-deps $TARGET -d .gpu-build/fallback "$req"
done
n=$(ls .gpu-build/wheels/*.whl | wc -l)
echo "$n wheels, $(du -sh .gpu-build/wheels | cut -f1)"
dups=$(ls .gpu-build/wheels | sed 's/-[0-9].*//' | tr 'A-Z.-' 'a-z__' | sort | uniq -d)
[ -z "$dups" ] || { echo "two versions of: $dups (remove the stale ones from .gpu-build/wheels)" >&2; exit 1; }

echo "== site folder for CPython 3.12 (.whl/site-py312.tar.xz)"
rm -rf .gpu-build/site
$PIP install -q --no-index --no-deps --no-compile $TARGET --target .gpu-build/site .gpu-build/wheels/*.whl
$PIP install -q --no-index --no-deps --no-compile $TARGET --target .gpu-build/site/_fallback .gpu-build/fallback/*.whl
rm -rf .gpu-build/site/bin .gpu-build/site/_fallback/bin  # console scripts name this machine's Python; gpu.sh runs `python3 -m dvc`
# debug info only: the wheels' own extension modules carry it (av's alone 27 MB of 31); their bundled
# libraries (*.libs/) are stripped already and are left alone
find .gpu-build/site -path '*.libs' -prune -o -name '*.so' -type f -print | while read -r so; do
  if file "$so" | grep -q 'not stripped'; then strip --strip-unneeded "$so"; fi
done
(cd .gpu-build/site && ls -d *.dist-info _fallback/*.dist-info | sed 's/\.dist-info$//') >.whl/site-py312.txt
tar -C .gpu-build/site -cf - . | xz -9 -T0 >.whl/site-py312.tar.xz.tmp
mv .whl/site-py312.tar.xz.tmp .whl/site-py312.tar.xz
echo "$(wc -l <.whl/site-py312.txt) packages, $(du -sh .gpu-build/site | cut -f1) unpacked, $(du -sh .whl/site-py312.tar.xz | cut -f1) packed"

echo "== data (.gpu-data)"
rm -rf .gpu-data/BSDS300 && cp -r "$SHARED/BSDS300" .gpu-data/BSDS300 && chmod -R u+w .gpu-data/BSDS300
tar -C "$SHARED" -cf - Set5 Set14 | xz -9 -T0 >.gpu-data/sets.tar.xz
"$PYTHON" - "$SHARED" .gpu-data/BSD100.pixels.sha256 <<'EOF'
# BSD100 = BSDS300's test images in id order (sorted as strings), cropped to even sizes at (0, 0).
# Written: sha256 of each original PNG's RGB pixels, after checking that the crop gives them exactly.
import hashlib, sys
from pathlib import Path
import numpy as np
from PIL import Image
shared, dest = Path(sys.argv[1]), Path(sys.argv[2])
tests = sorted((shared / "BSDS300/images/test").glob("*.jpg"), key=lambda p: p.stem)
lines = []
for i, jpg in enumerate(tests, 1):
    png = shared / f"BSD100/img_{i:03d}.png"
    with Image.open(png) as a, Image.open(jpg) as b:
        want = np.asarray(a.convert("RGB"))
        got = np.asarray(b.convert("RGB").crop((0, 0, b.width // 2 * 2, b.height // 2 * 2)))
        if a.mode != "RGB" or not np.array_equal(want, got):
            sys.exit(f"{png.name} is not {jpg.name} cropped: BSD100 would have to travel as files")
    lines.append(f"{hashlib.sha256(want.tobytes()).hexdigest()}  {png.name}  {jpg.stem}")
dest.write_text("\n".join(lines) + "\n")
print(f"BSD100: {len(lines)} images rebuilt from BSDS300 test images, pixel for pixel")
EOF

echo "== what travels"
tracked=$(git ls-files -z | xargs -0 stat -c %s 2>/dev/null | awk '{s+=$1} END{print s+0}')
untracked=$(git ls-files -z -o --exclude-standard | xargs -0 -r stat -c %s 2>/dev/null | awk '{s+=$1} END{print s+0}')
whl=$(du -sb .whl | cut -f1); data=$(du -sb .gpu-data | cut -f1)
total=$((tracked + untracked + whl + data))
printf '%-34s %6.1f MiB\n' "tracked files" "$(echo "$tracked/1048576" | bc -l)" \
  "untracked, not ignored" "$(echo "$untracked/1048576" | bc -l)" \
  ".whl (carry)" "$(echo "$whl/1048576" | bc -l)" ".gpu-data (carry)" "$(echo "$data/1048576" | bc -l)" \
  "total (limit 64 MiB)" "$(echo "$total/1048576" | bc -l)"
[ "$total" -lt "$LIMIT" ] || { echo "over the 64 MiB that may travel" >&2; exit 1; }

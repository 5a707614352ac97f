#!/usr/bin/env bash
# Builds the ward binary and the ward-ffi cdylib, builds uniffi-bindgen (its
# own workspace: sdk/ffi/bindgen), generates the Python, Kotlin and Swift
# bindings from the built library (library mode: the interface is what the
# Rust macros embedded), and runs the pytest suite, which drives `ward up`'s
# real servers through the generated Python bindings only.
# Kotlin and Swift are only generated and checked non-empty: no compiler for
# them here. Output: $WARD_BINDINGS_OUT (default: target/bindings).
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_INCREMENTAL=0
target="$(realpath -m "${CARGO_TARGET_DIR:-target}")"
out="${WARD_BINDINGS_OUT:-$target/bindings}"

cargo build --locked -p ward -p ward-ffi
# Same target dir: the bindgen's dependencies (uniffi) are then built once.
cargo build --locked --manifest-path sdk/ffi/bindgen/Cargo.toml --target-dir "$target"
lib="$target/debug/libward_ffi.so"
bindgen="$target/debug/uniffi-bindgen"

rm -rf "$out"
for lang in python kotlin swift; do
    "$bindgen" generate --library "$lib" --language "$lang" --out-dir "$out/$lang"
done
# The Python module loads the library from its own folder.
cp "$lib" "$out/python/"
for f in "$out/kotlin/uniffi/ward_ffi/ward_ffi.kt" "$out/swift/ward_ffi.swift"; do
    if [ ! -s "$f" ]; then
        echo "bindings missing or empty: $f" >&2
        ls -R "$out" >&2
        exit 1
    fi
done
echo "Kotlin and Swift bindings generated in $out/kotlin and $out/swift"

python3 -c "import pytest" 2>/dev/null || python3 -m pip install --quiet pytest
WARD_BIN="$target/debug/ward" PYTHONPATH="$out/python" \
    python3 -m pytest -q -p no:cacheprovider sdk/ffi/python/tests "$@"

#!/usr/bin/env bash
# Builds llama.cpp's C++ `llama-server` (the peer of `appliance bench api`) from the llama.cpp source vendored in
# the sdist of the installed llama-cpp-python (the same llama.cpp as the in-process peer; from PyPI, no git and no
# model hub) into VENV/bin/llama-server. CMAKE_ARGS as for llama-cpp-python (the Makefile's CPU flags).
# Usage: scripts/build_llama_server.sh VENV
set -euo pipefail
venv=${1:?usage: $0 VENV}
version=$("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("llama-cpp-python"))')
stamp="$venv/bin/llama-server.built"
if [ -x "$venv/bin/llama-server" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$version ${CMAKE_ARGS:-}" ]; then
    exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "building llama-server from llama-cpp-python $version's llama.cpp (several minutes)"
"$venv/bin/pip" download --quiet --no-deps --no-binary :all: "llama-cpp-python==$version" -d "$work"
tar xzf "$work"/llama_cpp_python-*.tar.gz -C "$work"
# shellcheck disable=SC2086 # CMAKE_ARGS is a list of flags
cmake -S "$work/llama_cpp_python-$version/vendor/llama.cpp" -B "$work/build" -DCMAKE_BUILD_TYPE=Release \
    -DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF ${CMAKE_ARGS:-} > "$work/cmake.log" 2>&1 \
    || { tail -30 "$work/cmake.log"; exit 1; }
cmake --build "$work/build" --target llama-server -j"$(nproc)" > "$work/build.log" 2>&1 || { tail -30 "$work/build.log"; exit 1; }
install -m 755 "$work/build/bin/llama-server" "$venv/bin/llama-server"
echo "$version ${CMAKE_ARGS:-}" > "$stamp"

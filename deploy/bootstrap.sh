# Sourced by ./run and ./test: make sure uv exists, then install the locked workspace into .venv.
if ! command -v uv >/dev/null 2>&1; then
  if [ -x "$HOME/.local/bin/uv" ]; then
    export PATH="$HOME/.local/bin:$PATH"
  else
    echo "installing uv (the Python package manager this workspace uses) ..." >&2
    python3 -m pip install --user --quiet uv
    export PATH="$HOME/.local/bin:$PATH"
  fi
fi
uv sync --frozen --python 3.11 --quiet

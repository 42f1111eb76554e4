#!/bin/sh
# The image's install steps, kept in one place: the Dockerfile runs them, and tests/deploy runs the
# same lines outside Docker so that a broken step fails CI rather than a user's build.
#   sh docker/install.sh torch     # torch==$TORCH_VERSION, from $TORCH_INDEX_URL if set (else PyPI)
#   sh docker/install.sh project   # the sm1 package from the current folder, not editable
# Both install into the active environment ($VIRTUAL_ENV/bin comes first on PATH).
set -eu

case "${1:-}" in
    torch)
        if [ -n "${TORCH_INDEX_URL:-}" ]; then
            pip install "torch==${TORCH_VERSION:?}" --index-url "$TORCH_INDEX_URL"
        else
            pip install "torch==${TORCH_VERSION:?}"
        fi
        ;;
    project)
        pip install .
        # the image must serve with what it installed: fail the build here, not at start
        python -c "import server.main, sm1.checkpoint"
        command -v sm1-server >/dev/null
        ;;
    *)
        echo "usage: sh docker/install.sh torch|project" >&2
        exit 2
        ;;
esac

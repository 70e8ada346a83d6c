# Shared by the scripts in this folder (POSIX sh). Source it; do not run it.
# REPO is the repository root, whatever the current directory.
REPO=$(CDPATH= cd -- "$(dirname -- "$0")/.." && pwd)

die() {
    printf '%s\n' "$*" >&2
    exit 1
}

# arg_value KEY ARGS...: print the value following KEY in ARGS (a KEY VALUE override), if any.
arg_value() {
    key=$1
    shift
    while [ "$#" -gt 1 ]; do
        if [ "$1" = "$key" ]; then
            printf '%s' "$2"
            return 0
        fi
        shift
    done
    return 0
}

# require_file PATH HOW: stop with a message naming PATH and what makes or fetches it.
require_file() {
    [ -e "$1" ] || die "missing: $1
$2"
}

# launch MODULE ARGS...: python -m MODULE, or torchrun when NPROC (processes per machine) > 1
# or NNODES > 1. Several machines: set NNODES, NODE_RANK, MASTER_ADDR and MASTER_PORT on each.
launch() {
    module=$1
    shift
    nproc=${NPROC:-1}
    nnodes=${NNODES:-1}
    if [ "$nproc" -gt 1 ] || [ "$nnodes" -gt 1 ]; then
        if [ "$nnodes" -gt 1 ]; then
            exec torchrun --nnodes="$nnodes" --node_rank="${NODE_RANK:?set NODE_RANK on each machine}" \
                --nproc_per_node="$nproc" --rdzv_backend=c10d \
                --rdzv_endpoint="${MASTER_ADDR:?set MASTER_ADDR}:${MASTER_PORT:-29500}" \
                --rdzv_id="${RDZV_ID:-biam}" -m "$module" "$@"
        fi
        exec torchrun --standalone --nproc_per_node="$nproc" -m "$module" "$@"
    fi
    exec "${PYTHON:-python}" -m "$module" "$@"
}

#!/bin/sh
# Entry point of the daskmeta image: runs its arguments, the same image serving as scheduler,
# worker and client.
#   dask-scheduler ARGS / dask-worker ARGS  ->  dask scheduler ARGS / dask worker ARGS
#     (the scripts dask-scheduler and dask-worker no longer exist in distributed; the
#     official Helm chart and dask-kubernetes' defaults still name them)
#   "dask worker" ARGS (one argument holding spaces, as a Helm value gives it) -> split
#   anything else (daskmeta ..., python ..., bash) -> run as is
set -e
case "$1" in
  dask-scheduler) shift; exec dask scheduler "$@" ;;
  dask-worker) shift; exec dask worker "$@" ;;
  *" "*) first=$1; shift; set -f; exec $first "$@" ;;
  "") exec daskmeta --help ;;
  *) exec "$@" ;;
esac

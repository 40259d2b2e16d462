#!/bin/sh
# The local cluster's stand-in for curlimages/curl's /entrypoint.sh (its image ENTRYPOINT, with
# CMD [curl]): a first argument that is an option, or that names no program, gets curl put in
# front of it; anything else runs as given. So `kubectl run --image=curlimages/curl -- -s URL`
# runs `curl -s URL`, and `-- sh -c ...` runs sh, as with the real image.
set -e
case $1 in
  -*) set -- curl "$@" ;;
  *) command -v "$1" >/dev/null 2>&1 || set -- curl "$@" ;;
esac
exec "$@"

#!/bin/sh
# As the vault image's: `server …` and other vault subcommands run `vault`; anything
# else runs as given.
set -eu
case "${1:-}" in
  server|status|operator|version) exec vault "$@" ;;
esac
exec "$@"

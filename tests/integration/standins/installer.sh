#!/bin/bash
# Stand-in for INSTALL_DIR/installer.sh of Dataiku DSS; only the upgrade mode, `-d DATA_DIR -u`,
# that reattaches a restored data dir (see README.md). It refuses while DSS runs and refuses a
# downgrade (a DATA_DIR newer than this installation), then replaces every symlink in
# DATA_DIR/bin by one into this INSTALL_DIR (regular files there, e.g. env-site.sh, are kept),
# rewrites bin/env-default.sh, migrates dss-version.json and records the call (args, time).
set -u
EVENTS='@EVENTS@'
install_dir=$(cd "$(dirname "$(readlink -f "$0")")" && pwd -P)
ev() { printf '%s\t%s\t%s\t%s\n' "$(date +%s.%N)" "$(id -un)" "$1" "${2:-}" >>"$EVENTS" 2>/dev/null || true; }
refuse() { echo "installer: $2" >&2; ev installer-refused "$2"; exit "$1"; }
version_of() { sed -n 's/.*"product_version"[[:space:]]*:[[:space:]]*"\([^"]*\)".*/\1/p' "$1" 2>/dev/null | head -n1; }

args="$*"
data_dir=
upgrade=
while getopts ":d:u" opt; do
  case "$opt" in
    d) data_dir=$OPTARG ;;
    u) upgrade=1 ;;
    *) refuse 2 "usage: installer.sh -d DATA_DIR -u (the stand-in knows only the upgrade mode)" ;;
  esac
done
[ -n "$data_dir" ] && [ -n "$upgrade" ] || refuse 2 "usage: installer.sh -d DATA_DIR -u (the stand-in knows only the upgrade mode)"
ev installer-called "$args"
[ -f "$data_dir/dss-version.json" ] && [ -f "$data_dir/install.ini" ] \
  || refuse 1 "$data_dir is not a DSS data directory (no dss-version.json / install.ini)"
data_dir=$(cd "$data_dir" && pwd -P)

pid=$(cat "$data_dir/run/supervisord.pid" 2>/dev/null)
if [[ ${pid:-} =~ ^[0-9]+$ ]] && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "dss-standin-server $data_dir"; then
  refuse 1 "DSS is running on $data_dir (pid $pid): stop it first"
fi

data_version=$(version_of "$data_dir/dss-version.json")
kit_version=$(version_of "$install_dir/dss-version.json")
[ -n "$data_version" ] || refuse 1 "cannot read product_version from $data_dir/dss-version.json"
newest=$(printf '%s\n%s\n' "$data_version" "$kit_version" | sort -V | tail -n1)
if [ "$data_version" != "$kit_version" ] && [ "$newest" = "$data_version" ]; then
  refuse 1 "DATA_DIR is DSS $data_version, newer than this installation ($kit_version): cannot downgrade"
fi

mkdir -p "$data_dir/bin"
for link in "$data_dir"/bin/*; do
  [ -L "$link" ] && rm -f "$link"
done
for target in "$install_dir"/bin/*; do
  ln -s "$target" "$data_dir/bin/$(basename "$target")"
done
printf 'export DKUINSTALLDIR="%s"\nexport DIP_HOME="%s"\n' "$install_dir" "$data_dir" >"$data_dir/bin/env-default.sh"
cp "$install_dir/dss-version.json" "$data_dir/dss-version.json"
ev installer-upgraded "$data_dir $data_version -> $kit_version"
echo "DSS data directory $data_dir attached to $install_dir (DSS $kit_version)"

#!/usr/bin/env bash
# Installs or updates the collector on its VM: Python, the code, a virtual
# environment from requirements.txt, the config, and the systemd service.
# deploy.sh copies the files over and runs this through `gcloud compute ssh`:
#
#   sudo bash vm-setup.sh --bundle meetup-collector.tar.gz --config config.json
#
# The bundle is the repository's tracked files (tar.gz); the config is the
# trigger's config.json with the function URLs filled in. Running it again with
# the same files changes nothing and leaves the service running. A new bundle is
# built beside the running one, so the service stops only for its restart.
set -euo pipefail

readonly SERVICE=meetup-collector
readonly SERVICE_USER=meetup-collector
readonly INSTALL_DIR=/opt/meetup-collector
readonly CONFIG_PATH=/etc/meetup-collector/config.json
readonly UNIT_PATH=/etc/systemd/system/meetup-collector.service

BUNDLE=
CONFIG=
CHANGED=0

die() {
  printf 'vm-setup.sh: error: %s\n' "$*" >&2
  exit 1
}

say() {
  printf 'vm-setup.sh: %s\n' "$*"
}

parse_args() {
  while (($# > 0)); do
    case $1 in
      --bundle | --config)
        (($# >= 2)) || die "$1 needs a value"
        if [[ $1 == --bundle ]]; then BUNDLE=$2; else CONFIG=$2; fi
        shift
        ;;
      -h | --help)
        printf 'Usage: sudo bash vm-setup.sh --bundle FILE.tar.gz --config config.json\n'
        exit 0
        ;;
      *) die "unknown argument: $1 (see --help)" ;;
    esac
    shift
  done

  [[ -n $BUNDLE && -n $CONFIG ]] || die "--bundle and --config are both required (see --help)"
  [[ -r $BUNDLE ]] || die "cannot read the bundle $BUNDLE"
  [[ -r $CONFIG ]] || die "cannot read the config $CONFIG"
  ((EUID == 0)) || die "run as root (sudo): it installs packages, a user and a service"
}

install_python() {
  # shellcheck disable=SC2016  # ${Status} is dpkg-query's field, not the shell's
  if [[ $(dpkg-query -W -f='${Status}' python3-venv 2>/dev/null) == "install ok installed" ]]; then
    return 0
  fi
  say "installing Python"
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3 python3-venv
}

ensure_service_user() {
  if id -u "$SERVICE_USER" >/dev/null 2>&1; then
    return 0
  fi
  say "creating the system user $SERVICE_USER"
  useradd --system --user-group --no-create-home --home-dir /nonexistent \
    --shell /usr/sbin/nologin "$SERVICE_USER"
}

# Each bundle gets its own folder, named by its content, with its own virtual
# environment; "current" points at the one in service.
install_release() {
  local release_id release_dir
  release_id=$(sha256sum "$BUNDLE" | cut -c1-16)
  release_dir=$INSTALL_DIR/releases/$release_id

  if [[ ! -f $release_dir/.ready ]]; then
    say "installing release $release_id"
    rm -rf "$release_dir"
    mkdir -p "$release_dir"
    tar --no-same-owner -xzf "$BUNDLE" -C "$release_dir"
    [[ -f $release_dir/trigger_gcf.py ]] || die "the bundle has no trigger_gcf.py"

    # The VM needs the runtime part of requirements.txt only: everything above
    # its "# development" heading (or all of it, if there is no such heading).
    sed '/^#[[:space:]]*development/,$d' "$release_dir/requirements.txt" \
      >"$release_dir/requirements-vm.txt"
    python3 -m venv "$release_dir/venv"
    "$release_dir/venv/bin/pip" install --quiet --disable-pip-version-check \
      -r "$release_dir/requirements-vm.txt"
    touch "$release_dir/.ready"
  fi

  local previous
  previous=$(readlink "$INSTALL_DIR/current" || true)
  if [[ $previous != "$release_dir" ]]; then
    ln -sfn "$release_dir" "$INSTALL_DIR/current.new"
    mv -T "$INSTALL_DIR/current.new" "$INSTALL_DIR/current"
    CHANGED=1
    say "release $release_id is current"
  fi

  # Keep the release in service and the one before it (for a rollback).
  local old
  for old in "$INSTALL_DIR"/releases/*; do
    if [[ $old != "$release_dir" && $old != "$previous" ]]; then
      rm -rf "$old"
    fi
  done
}

# install_file SOURCE TARGET MODE GROUP: copies only if the content differs.
install_file() {
  local source=$1 target=$2 mode=$3 group=$4
  if cmp -s "$source" "$target"; then
    return 0
  fi
  install -D -m "$mode" -o root -g "$group" "$source" "$target"
  CHANGED=1
  say "installed $target"
}

main() {
  parse_args "$@"
  umask 022

  install_python
  ensure_service_user
  install_release
  # The config holds no secret, but only the service needs to read it.
  install_file "$CONFIG" "$CONFIG_PATH" 0640 "$SERVICE_USER"
  install_file "$INSTALL_DIR/current/deploy/meetup-collector.service" "$UNIT_PATH" 0644 root

  systemctl daemon-reload
  systemctl enable --quiet "$SERVICE"
  if ((CHANGED)); then
    say "restarting $SERVICE"
    systemctl restart "$SERVICE"
  else
    say "nothing changed"
    systemctl start "$SERVICE"
  fi
  systemctl --no-pager --lines=0 status "$SERVICE" || true
}

main "$@"

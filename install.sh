#!/bin/sh
# Install, upgrade or uninstall srsd from this clone: a venv in /opt/srsd, /usr/local/bin/srsd.
#
#   sudo sh install.sh               install, or upgrade after `git pull` (same command)
#   sudo sh install.sh --uninstall   remove /opt/srsd and the link; keep /etc/srsd, secrets, user
#
# Debian and Ubuntu forbid `pip install` into the system Python (PEP 668, "externally
# managed"), so srsd gets a virtual environment of its own, made with Debian's own
# /usr/bin/python3 (the apt package python3-venv is installed when missing). It also creates
# the system user srsd (`srsd serve --run-as srsd`), as a Debian package would: a user of
# srsd's own, so that no other daemon can read its secret. Nothing else on the system
# changes: no configuration is written, no service is installed or started.
set -eu

PREFIX=/opt/srsd                # the venv: delete it and srsd is gone
LINK=/usr/local/bin/srsd        # on root's PATH and sudo's secure_path; the systemd unit's ExecStart
PYTHON=/usr/bin/python3         # Debian's Python, upgraded by apt
USER_NAME=srsd                  # the system user srsd runs as (--run-as srsd)
STATE=/var/lib/srsd             # its home: srsd's state directory when started as root
MIN_PYTHON=3.11                 # pyproject.toml's requires-python

say() { printf 'install.sh: %s\n' "$*"; }
die() { printf 'install.sh: %s\n' "$*" >&2; exit 1; }

usage() {
    echo "usage: sudo sh install.sh                install, or upgrade after git pull"
    echo "       sudo sh install.sh --uninstall    remove $PREFIX and $LINK; keep /etc/srsd, $STATE, user $USER_NAME"
}

uninstall() {
    if [ -L "$LINK" ] && [ "$(readlink "$LINK")" = "$PREFIX/bin/srsd" ]; then
        rm -f "$LINK"
        say "removed $LINK"
    elif [ -e "$LINK" ]; then
        say "left $LINK alone: it is not the link this script made"
    fi
    if [ -f "$PREFIX/pyvenv.cfg" ]; then
        rm -rf "$PREFIX"
        say "removed $PREFIX"
    elif [ -e "$PREFIX" ]; then
        say "left $PREFIX alone: it is not a venv"
    fi
    for kept in /etc/srsd "$STATE"; do
        [ -e "$kept" ] && say "kept $kept (settings, secrets: delete it once no bounce to an address it signed can come back)"
    done
    if id "$USER_NAME" >/dev/null 2>&1; then
        say "kept the system user $USER_NAME (it owns $STATE; deluser --system $USER_NAME once that is gone)"
    fi
    for unit in /etc/systemd/system/srsd.service /etc/systemd/system/srsd.socket; do
        [ -e "$unit" ] && say "note: $unit is still installed (systemctl disable --now srsd; rm it)"
    done
    return 0
}

python_ok() {
    "$PYTHON" -c "import sys; sys.exit(sys.version_info < tuple(map(int, '$MIN_PYTHON'.split('.'))))" 2>/dev/null
}

# python3 -m venv needs ensurepip, which Debian and Ubuntu ship in python3-venv (python3.X-venv).
venv_ok() {
    "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null
}

install_packages() {
    command -v apt-get >/dev/null 2>&1 || die "$* missing and no apt-get here: install $* yourself"
    say "installing $* with apt-get"
    DEBIAN_FRONTEND=noninteractive apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@"
}

# The system user srsd: no login, no password, home /var/lib/srsd (not created here: srsd
# creates its state directory 0700 and hands it over). adduser as Debian packages call it;
# where it is missing (a minimal root), useradd from passwd, which every Debian has.
make_user() {
    if id "$USER_NAME" >/dev/null 2>&1; then
        say "system user $USER_NAME exists"
    elif command -v adduser >/dev/null 2>&1; then
        adduser --quiet --system --group --home "$STATE" --no-create-home "$USER_NAME"
        say "created the system user $USER_NAME"
    else
        useradd --system --user-group --home-dir "$STATE" --no-create-home \
            --shell /usr/sbin/nologin --comment "srsd SRS daemon" "$USER_NAME"
        say "created the system user $USER_NAME"
    fi
    # An earlier quick start ran srsd as nobody, which then owns the state directory and
    # the secret in it: give them to srsd (the same secret: bounces in flight still decode).
    nobody=$(id -u nobody 2>/dev/null || echo none)
    if [ -d "$STATE" ] && [ ! -L "$STATE" ] && [ "$(stat -c %u "$STATE")" = "$nobody" ]; then
        chown -R "$USER_NAME:$USER_NAME" "$STATE"
        chmod 0700 "$STATE"
        say "gave $STATE (owned by nobody, from an earlier start) to $USER_NAME"
    fi
}

install() {
    cd "$(dirname "$0")"
    [ -f pyproject.toml ] && [ -d src/srsd ] || die "run me from an srsd clone (no pyproject.toml/src/srsd here)"
    [ -x "$PYTHON" ] || install_packages python3
    python_ok || die "$PYTHON is $("$PYTHON" -V 2>&1); srsd needs Python >= $MIN_PYTHON (Debian 12, Ubuntu 24.04 or later)"
    venv_ok || install_packages python3-venv
    venv_ok || die "$PYTHON -m venv still cannot make a venv with pip (python3-venv installed?)"

    # A venv made by another Python (a dist-upgrade replaced 3.11 by 3.13) cannot be reused:
    # its bin/python now runs the new one, but its packages are in lib/python3.11.
    if [ -e "$PREFIX" ] && [ ! -f "$PREFIX/pyvenv.cfg" ]; then
        die "$PREFIX exists and is not a venv: move it away first"
    fi
    if [ -e "$PREFIX" ]; then
        want=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
        have=$(sed -n 's/^version[_a-z]* *= *\([0-9]*\.[0-9]*\).*/\1/p' "$PREFIX/pyvenv.cfg" 2>/dev/null || true)
        if [ "$want" != "$have" ]; then
            say "$PREFIX was made by another Python ($have); making it again"
            rm -rf "$PREFIX"
        fi
    fi
    if [ ! -x "$PREFIX/bin/python" ]; then
        say "making the venv $PREFIX"
        "$PYTHON" -m venv "$PREFIX"
    fi
    say "installing srsd from $(pwd) into $PREFIX"
    # Built from a copy: a build in the clone would leave root-owned build/ and egg-info
    # there, and setuptools' build/lib keeps modules a later `git pull` removed.
    build=$(mktemp -d)
    trap 'rm -rf "$build"' EXIT
    cp -R pyproject.toml README.md src "$build/"
    "$PREFIX/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade "$build"
    ln -sfn "$PREFIX/bin/srsd" "$LINK"
    make_user
    say "$("$LINK" --version) installed: $LINK -> $PREFIX/bin/srsd"
}

[ "$#" -le 1 ] || { usage >&2; exit 2; }
case "${1:-}" in
    "") action=install ;;
    --uninstall) action=uninstall ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; exit 2 ;;
esac
[ "$(id -u)" = 0 ] || die "needs root: sudo sh install.sh${1:+ $1}"
"$action"

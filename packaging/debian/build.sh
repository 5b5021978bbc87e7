#!/bin/sh
# Build srsd's Debian package from this repository: packaging/debian/build.sh [OUTDIR]
#
# dpkg-buildpackage wants debian/ at the top of the source tree, and the repository keeps it
# in packaging/debian/: this copies the repository's files to a temporary directory, puts
# packaging/debian/ there as debian/ with a changelog for the version in
# src/srsd/__init__.py, builds the binary package (tests skipped: they run from the
# repository) and leaves OUTDIR/srsd_VERSION_all.deb (default OUTDIR: dist/ in the
# repository). Needs: debhelper dh-python pybuild-plugin-pyproject python3-all
# python3-setuptools help2man (dpkg-buildpackage names any that are missing).
set -eu

repo=$(cd "$(dirname "$0")/../.." && pwd)
out=${1:-$repo/dist}
version=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' "$repo/src/srsd/__init__.py")
if [ -z "$version" ]; then
	echo "build.sh: no __version__ in $repo/src/srsd/__init__.py" >&2
	exit 1
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
tree="$work/srsd-$version"
mkdir "$tree"
if [ -d "$repo/.git" ] || [ -f "$repo/.git" ]; then
	# The files git knows of or would add (not .venv, dist/ or other ignored files).
	git -C "$repo" ls-files -z --cached --others --exclude-standard > "$work/files"
	tar -cf "$work/tree.tar" -C "$repo" --null --no-recursion --ignore-failed-read \
		--files-from="$work/files"
	tar -xf "$work/tree.tar" -C "$tree"
	commit=$(git -C "$repo" describe --always --dirty 2>/dev/null || echo unknown)
	stamp=$(git -C "$repo" log -1 --format=%cD 2>/dev/null || date -R)
else
	tar -cf - -C "$repo" --exclude=./dist --exclude=./.venv . | tar -xf - -C "$tree"
	commit="no git"
	stamp=$(date -R)
fi
rm -rf "$tree/debian"
cp -R "$repo/packaging/debian" "$tree/debian"
rm -f "$tree/debian/build.sh"
cat > "$tree/debian/changelog" <<END
srsd ($version) unstable; urgency=medium

  * Built from the srsd repository ($commit).

 -- srsd maintainers <srsd@packaging.invalid>  $stamp
END

# Debian's own tools and Python only (a pyenv or venv python3 first on PATH would build for
# the wrong interpreter).
(cd "$tree" && PATH=/usr/sbin:/usr/bin:/sbin:/bin DEB_BUILD_OPTIONS="nocheck ${DEB_BUILD_OPTIONS:-}" dpkg-buildpackage -us -uc -b)
mkdir -p "$out"
cp "$work/srsd_${version}_all.deb" "$out/"
echo "built $out/srsd_${version}_all.deb"

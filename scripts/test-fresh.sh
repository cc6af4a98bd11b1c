#!/usr/bin/env bash
# test-fresh.sh proves the newcomer's path on a machine that has nothing installed: it builds
# a clean Debian bookworm root with mmdebstrap, runs scripts/install-deps.sh inside it, then
# checks that every tool and version cloche needs is there, that the guest image (kernel
# download included) builds in that root with this checkout's binaries, and that `make demo`
# (the README's first command) passes there.
#
# The fresh root's apt sources are this machine's own enabled entries for the base suite and
# its updates and security suites, found the way install-deps.sh finds them; backports is left
# out so that install-deps.sh has to derive it itself, as on a fresh machine.
#
# Only the mmdebstrap base tarball is cached (under CLOCHE_CI_CACHE, default
# /var/cache/cloche-ci, keyed by the sources, the mmdebstrap version and the ISO week); every
# run unpacks it into a new directory, so install-deps.sh always starts from the clean base.
# Downloaded .deb files are kept in the cache too (apt checks each against the signed index).
#
# Usage: scripts/test-fresh.sh   (as root; needs mmdebstrap, unshare and chroot on the host,
# and bin/cloche plus bin/cloche-guest from `make build`)
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=scripts/install-deps.sh
source scripts/install-deps.sh

readonly CACHE=${CLOCHE_CI_CACHE:-/var/cache/cloche-ci}
readonly BASE_FORMAT=cloche-test-fresh-base-1
readonly QEMU_MIN_MAJOR=10
readonly STATE_IN_ROOT=/tmp/cloche-state
readonly KERNEL_PACKAGE=linux-image-cloud-amd64 # image/guestimage.KernelPackage

STAGE=setup
WORK=""
T0=$SECONDS
TIMES=()

say() { printf 'test-fresh: %s\n' "$*" >&2; }
fail() {
	say "FAILED in stage '$STAGE': $*"
	exit 1
}
on_failure() {
	local rc=$? cmd=$1 line=$2
	fail "'$cmd' exited with status $rc (line $line)"
}

# stage NAME: ends the previous stage (printing its time) and starts NAME.
stage() {
	stage_done
	STAGE=$1
	STAGE_START=$SECONDS
	say "== $STAGE"
}
stage_done() {
	if [[ $STAGE != setup ]]; then
		TIMES+=("$(printf '%-14s %4ss' "$STAGE" $((SECONDS - STAGE_START)))")
		say "   $STAGE done in $((SECONDS - STAGE_START))s"
	fi
}

cleanup() {
	if [[ -n $WORK && -d $WORK ]]; then
		# The root's mounts lived in a private mount namespace that is gone by now;
		# --one-file-system is a second guard against deleting through a mount.
		rm -rf --one-file-system "$WORK"
	fi
}

# fresh_sources prints the one-line apt entries the fresh root gets: every enabled entry of
# this machine for the base suite and its -updates and -security suites.
fresh_sources() {
	local uri suite comps signed opts
	while IFS=$'\t' read -r uri suite comps signed; do
		case $suite in
		"$SUITE" | "$SUITE-updates" | "$SUITE-security") ;;
		*) continue ;;
		esac
		opts=""
		if [[ -n $signed ]]; then opts="[signed-by=$signed] "; fi
		printf 'deb %s%s %s %s\n' "$opts" "$uri" "$suite" "${comps:-main}"
	done < <(enabled_suites) | sort -u
}

# base_tarball prints the cached base tarball for these sources, building it if missing.
base_tarball() {
	local -a sources
	mapfile -t sources < <(fresh_sources)
	((${#sources[@]})) || fail "no enabled apt entry for suite '$SUITE' in $SOURCES_LIST or $SOURCES_DIR to build the fresh root from"
	local key tar tmp
	key=$(printf '%s\n' "$BASE_FORMAT" "$(mmdebstrap --version)" "$(date -u +%G-W%V)" "${sources[@]}" | sha256sum | cut -c1-16)
	tar="$CACHE/base-$SUITE-$key.tar"
	if [[ -s $tar ]]; then
		say "   cached: $tar"
	else
		say "   building $tar with mmdebstrap --variant=apt from:"
		printf '     %s\n' "${sources[@]}" >&2
		mkdir -p "$CACHE"
		tmp=$(mktemp -d "$CACHE/.base-XXXXXX")
		if ! mmdebstrap --quiet --variant=apt --format=tar "$SUITE" "$tmp/base.tar" "${sources[@]}" >&2; then
			rm -rf "$tmp"
			fail "mmdebstrap --variant=apt $SUITE failed (its output is above)"
		fi
		mv -f "$tmp/base.tar" "$tar"
		rmdir "$tmp"
		# Older bases (another week, other sources) are no longer used.
		find "$CACHE" -maxdepth 1 -name "base-$SUITE-*.tar" ! -name "${tar##*/}" -delete
	fi
	printf '%s\n' "$tar"
}

# ROOT_BINDS are extra "HOST_DIR:DIR_IN_ROOT" bind mounts and ROOT_ENV extra NAME=VALUE
# variables for in_root (run_demo lends the root this host's Go).
ROOT_BINDS=()
ROOT_ENV=()

# in_root ROOT CMD...: runs CMD in the chroot ROOT with /proc, /dev and /sys mounted and the
# apt archive cache bound, all inside a private mount and PID namespace, so nothing stays
# mounted on the host when it ends, however it ends.
in_root() {
	local root=$1
	shift
	mkdir -p "$CACHE/apt-archives/partial"
	# shellcheck disable=SC2016 # the inner script expands its own arguments
	unshare --mount --propagation private --pid --fork --kill-child -- bash -euc '
		root=$1 archives=$2 binds=$3 env=$4
		shift 4
		mount -t proc proc "$root/proc"
		mount --rbind /dev "$root/dev"
		mount -t sysfs -o ro sysfs "$root/sys"
		mount --bind "$archives" "$root/var/cache/apt/archives"
		for b in $binds; do
			mkdir -p "$root${b#*:}"
			mount --bind "${b%%:*}" "$root${b#*:}"
		done
		# shellcheck disable=SC2086 # env is a list of NAME=VALUE words
		exec chroot "$root" /usr/bin/env -i PATH=/usr/local/go/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
			HOME=/root LC_ALL=C.UTF-8 DEBIAN_FRONTEND=noninteractive $env "$@"
	' in_root "$root" "$CACHE/apt-archives" "${ROOT_BINDS[*]}" "${ROOT_ENV[*]}" "$@"
}

# check NAME CMD...: runs CMD in the root and prints NAME and the first line of its output.
check() {
	local name=$1 out
	shift
	if ! out=$(in_root "$ROOT" "$@" 2>&1); then
		fail "$name: '$*' failed in the fresh root: $(head -n 3 <<<"$out" | tr '\n' ' ')"
	fi
	printf '   %-12s %s\n' "$name" "$(head -n 1 <<<"$out")" >&2
	CHECK_OUT=$out
}

check_tools() {
	check qemu qemu-system-x86_64 --version
	local major
	major=$(sed -n 's/^QEMU emulator version \([0-9]*\)\..*/\1/p' <<<"$CHECK_OUT")
	[[ -n $major ]] || fail "qemu-system-x86_64 --version printed '$(head -n 1 <<<"$CHECK_OUT")', expected 'QEMU emulator version N...'"
	((major >= QEMU_MIN_MAJOR)) || fail "QEMU is version $major, expected $QEMU_MIN_MAJOR or newer (from $BACKPORTS_SUITE)"
	# shellcheck disable=SC2016 # ${Version} is dpkg-query's format, not a shell expansion
	check qemu-src dpkg-query -W -f='${Version}\n' qemu-system-x86
	[[ $CHECK_OUT == *bpo12* ]] || fail "qemu-system-x86 is $CHECK_OUT, expected the $BACKPORTS_SUITE build (~bpo12)"
	check qemu-img qemu-img --version
	check mke2fs mke2fs -V
	check debugfs debugfs -V
	check veritysetup veritysetup --version
	check mmdebstrap mmdebstrap --version
	check busybox sh -c 'busybox | head -n 1 && ! ldd /bin/busybox >/dev/null 2>&1'
	check ovmf ls /usr/share/ovmf/OVMF.fd
	check osslsigncode sh -c 'osslsigncode --version 2>&1 | head -n 1'
	check modinfo modinfo --version
	check dpkg-deb dpkg-deb --version
	check xz xz --version
	check gcc gcc --version
	check make make --version
	check git git --version
	check shellcheck sh -c 'shellcheck --version | sed -n 2p'
}

# check_kernel_download resolves and downloads the guest kernel package the way
# image/guestimage.FetchKernelDeb does (apt-cache show, then apt-get download of the exact
# versioned package), independently of the Go code that check_guest_image then runs.
check_kernel_download() {
	check kernel-meta apt-cache show --no-all-versions "$KERNEL_PACKAGE/$BACKPORTS_SUITE"
	local dep
	dep=$(sed -n 's/^Depends:.*\(linux-image-[a-z0-9.+~-]*\) (= \([^)]*\)).*/\1=\2/p' <<<"$CHECK_OUT" | head -n 1)
	[[ -n $dep ]] || fail "apt-cache show $KERNEL_PACKAGE/$BACKPORTS_SUITE names no 'linux-image-* (= version)' dependency"
	check kernel sh -c "cd /tmp && apt-get -q download '$dep' >/dev/null && ls /tmp/linux-image-*.deb"
}

# check_guest_image builds the guest image in the fresh root with this checkout's static
# binaries: the kernel download, module resolution and initramfs assembly all run there.
check_guest_image() {
	local b
	for b in cloche cloche-guest; do
		[[ -x bin/$b ]] || fail "bin/$b is missing: run make build first"
		install -m 0755 "bin/$b" "$ROOT/usr/local/bin/$b"
	done
	check guest-image cloche --state-dir "$STATE_IN_ROOT" image guest --guest-init /usr/local/bin/cloche-guest
	in_root "$ROOT" sh -c "ls -l $STATE_IN_ROOT/guest-image" >&2
}

# run_demo runs the README's first command, make demo, in the fresh root on a copy of this
# checkout. Go is the one thing a fresh machine of this kind already has, so the root gets
# this host's Go toolchain and module cache (and build cache, for speed); everything else
# make demo needs, it installs or builds there: the binaries, the kernel package, the guest
# image, the toolchain image (mmdebstrap), then the build in the VM and its verification.
run_demo() {
	command -v go >/dev/null || fail "go not found on this host: the fresh root borrows this host's Go"
	local src=/opt/cloche/src gomod gocache v
	gomod=$(go env GOMODCACHE)
	gocache=$(go env GOCACHE)
	mkdir -p "$ROOT$src" "$gomod" "$gocache"
	git ls-files -z --cached --others --exclude-standard | tar --null --ignore-failed-read -T - -cf - | tar -xf - -C "$ROOT$src"
	ROOT_BINDS=("$(go env GOROOT):/usr/local/go" "$gomod:/root/go/pkg/mod" "$gocache:/root/.cache/go-build")
	ROOT_ENV=()
	for v in GOPROXY GOSUMDB GONOSUMDB GOPRIVATE GOINSECURE GONOPROXY; do
		if [[ -n $(go env "$v") ]]; then ROOT_ENV+=("$v=$(go env "$v")"); fi
	done
	in_root "$ROOT" make -C "$src" demo || fail "make demo failed in the fresh root (its output is above)"
	ROOT_BINDS=()
	ROOT_ENV=()
}

# check_reproduced compares two guest images built on two "machines": the one from this
# host's binaries (check_guest_image) and the one make demo built in the fresh root from its
# own guest init build. The pinned kernel and the pinned Go make them the same bytes.
check_reproduced() {
	local here there
	here=$(in_root "$ROOT" sh -c "cd $STATE_IN_ROOT/guest-image && sha256sum vmlinuz initrd.img")
	there=$(in_root "$ROOT" sh -c "cd /var/lib/cloche/guest-image && sha256sum vmlinuz initrd.img")
	local line
	while read -r line; do echo "   host-built   $line" >&2; done <<<"$here"
	while read -r line; do echo "   root-built   $line" >&2; done <<<"$there"
	[[ $here == "$there" ]] || fail "the guest image built in the fresh root differs from the one built from this host's binaries"
}

main() {
	set -E
	trap 'on_failure "$BASH_COMMAND" "$LINENO"' ERR
	trap cleanup EXIT
	[[ $(id -u) -eq 0 ]] || fail "must run as root (mmdebstrap, chroot and mounts)"
	local tool
	for tool in mmdebstrap unshare chroot; do
		command -v "$tool" >/dev/null || fail "$tool not found on this host (make deps installs mmdebstrap; unshare and chroot come with util-linux and coreutils)"
	done

	stage base
	local tar
	tar=$(base_tarball)

	stage unpack
	mkdir -p "$CACHE"
	WORK=$(mktemp -d "$CACHE/fresh-XXXXXX")
	ROOT=$WORK/root
	mkdir "$ROOT"
	tar -xf "$tar" -C "$ROOT" --numeric-owner
	rm -f "$ROOT/etc/resolv.conf"
	cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
	mkdir -p "$ROOT/opt/cloche"
	install -m 0755 scripts/install-deps.sh "$ROOT/opt/cloche/install-deps.sh"

	stage install-deps
	in_root "$ROOT" bash /opt/cloche/install-deps.sh || fail "scripts/install-deps.sh failed in the fresh root (its last line above says why)"

	stage idempotent
	local again
	again=$(in_root "$ROOT" bash /opt/cloche/install-deps.sh 2>&1) || fail "a second run of install-deps.sh failed: $again"
	[[ $again == *"all dependencies present"* ]] || fail "a second run of install-deps.sh did more than check: $again"

	stage tools
	check_tools

	stage kernel
	check_kernel_download

	stage guest-image
	check_guest_image

	stage demo
	run_demo

	stage reproduced
	check_reproduced

	stage_done
	say "all checks passed in $((SECONDS - T0))s:"
	printf '   %s\n' "${TIMES[@]}" >&2
}

main "$@"

#!/usr/bin/env bash
# install-deps.sh installs the host packages cloche needs to build guest and toolchain images
# and to run guests under QEMU. It is idempotent and non-interactive (CI runs it as root with
# no stdin): it installs only what is missing and touches apt's package lists only when it
# added a source or has something to install.
#
# QEMU 10 (sev-snp-guest object) and the 6.12 cloud kernel (SEV/TDX guest drivers) come from
# bookworm-backports. That suite is added by deriving it from the machine's own bookworm
# source entry (same URI, same Signed-By), so no mirror host is ever written here.
#
# Every failure ends with one line naming the package or command that failed and why.
# scripts/test-fresh.sh sources this file for enabled_suites (main runs only when executed).
set -euo pipefail

readonly SOURCES_DIR=/etc/apt/sources.list.d
readonly SOURCES_LIST=/etc/apt/sources.list
readonly BACKPORTS_FILE="$SOURCES_DIR/cloche-backports.sources"
readonly SUITE=bookworm
readonly BACKPORTS_SUITE="$SUITE-backports"

# Packages from the base suite, and packages that must come from backports, each with the
# minimum version that makes it usable ("-" for any version). ovmf and osslsigncode are for
# the measurement tests: Debian's OVMF.fd carries SEV and TDVF metadata to cross-check the
# launch-digest code against, and osslsigncode reads the kernel's Authenticode digest.
# make test lints the repository's shell scripts with shellcheck.
readonly BASE_PACKAGES=(e2fsprogs cryptsetup-bin mmdebstrap xz-utils busybox-static kmod git make gcc ovmf osslsigncode shellcheck)
readonly BACKPORTS_PACKAGES=(qemu-system-x86 qemu-utils)
readonly BACKPORTS_MIN_VERSION="1:10"

log() { printf 'install-deps: %s\n' "$*" >&2; }
die() {
	log "error: $*"
	exit 1
}

# on_err names the command errexit is about to stop the script on, which would otherwise
# end it without a word.
on_err() {
	local rc=$? cmd=$1 line=$2
	die "'$cmd' failed with exit status $rc (${BASH_SOURCE[1]:-$0} line $line)"
}

# apt_quiet runs an apt command with its output kept in a log that is shown only on failure;
# the final error line repeats apt's own "E:" lines, which name the package and the cause.
apt_quiet() {
	local out start=$SECONDS reasons
	out=$(mktemp)
	if ! DEBIAN_FRONTEND=noninteractive "$@" </dev/null >"$out" 2>&1; then
		cat "$out" >&2
		reasons=$(grep -E '^(E|Err):' "$out" | head -n 3 | tr '\n' ' ' || true)
		rm -f "$out"
		die "'$*' failed: ${reasons:-see the output above}"
	fi
	rm -f "$out"
	log "  done in $((SECONDS - start))s"
}

# installed_version prints the installed version of a package, or nothing.
installed_version() {
	# dpkg-query exits 1 for a package dpkg has never heard of: that is "not installed",
	# not an error, and must not end the script under errexit/pipefail.
	{ dpkg-query -W -f='${db:Status-Abbrev} ${Version}\n' "$1" 2>/dev/null || true; } |
		awk '$1 == "ii" { print $2 }'
}

# enabled_suites prints "uri<TAB>suite<TAB>components<TAB>signed-by" for every enabled "deb"
# entry of the machine's apt sources, in both the deb822 and the one-line format.
enabled_suites() {
	local f
	for f in "$SOURCES_DIR"/*.sources; do
		[[ -f $f ]] || continue
		awk '
			function flush() {
				if (types ~ /(^| )deb( |$)/ && tolower(enabled) != "no") {
					n = split(uris, u, " "); m = split(suites, s, " ")
					for (i = 1; i <= n; i++) for (j = 1; j <= m; j++)
						printf "%s\t%s\t%s\t%s\n", u[i], s[j], comps, signed
				}
				types = uris = suites = comps = signed = enabled = ""
			}
			/^[ \t]*#/ { next }
			/^[ \t]*$/ { flush(); next }
			/^[A-Za-z-]+:/ {
				key = tolower(substr($0, 1, index($0, ":") - 1))
				val = substr($0, index($0, ":") + 1)
				gsub(/^[ \t]+|[ \t]+$/, "", val); gsub(/[ \t]+/, " ", val)
				if (key == "types") types = val
				else if (key == "uris") uris = val
				else if (key == "suites") suites = val
				else if (key == "components") comps = val
				else if (key == "signed-by") signed = val
				else if (key == "enabled") enabled = val
			}
			END { flush() }
		' "$f"
	done
	for f in "$SOURCES_LIST" "$SOURCES_DIR"/*.list; do
		[[ -f $f ]] || continue
		awk '
			/^[ \t]*deb[ \t]/ {
				line = $0; signed = ""
				sub(/^[ \t]*deb[ \t]+/, "", line)
				if (line ~ /^\[/) {
					opts = substr(line, 2, index(line, "]") - 2)
					line = substr(line, index(line, "]") + 1)
					n = split(opts, o, " ")
					for (i = 1; i <= n; i++) if (o[i] ~ /^signed-by=/) signed = substr(o[i], 11)
				}
				n = split(line, w, " ")
				if (n < 2) next
				comps = ""
				for (i = 3; i <= n; i++) comps = comps (comps == "" ? "" : " ") w[i]
				printf "%s\t%s\t%s\t%s\n", w[1], w[2], comps, signed
			}
		' "$f"
	done
}

# base_entry prints the enabled entry (enabled_suites' format) for suite, or nothing.
base_entry() {
	enabled_suites | awk -F'\t' -v s="$1" '$2 == s { print; exit }'
}

# ensure_backports adds the backports suite unless some enabled entry already provides it,
# and sets SOURCE_ADDED=1 when it wrote a new source.
SOURCE_ADDED=0
ensure_backports() {
	local uri comps signed tmp
	if [[ -n $(base_entry "$BACKPORTS_SUITE") ]]; then
		return 0
	fi
	IFS=$'\t' read -r uri _ comps signed <<<"$(base_entry "$SUITE")" || true
	[[ -n ${uri:-} ]] || die "no enabled apt source entry for suite '$SUITE' found in $SOURCES_LIST or $SOURCES_DIR; expected one to derive '$BACKPORTS_SUITE' from"
	tmp=$(mktemp "$SOURCES_DIR/.cloche-backports.XXXXXX")
	{
		printf 'Types: deb\n'
		printf 'URIs: %s\n' "$uri"
		printf 'Suites: %s\n' "$BACKPORTS_SUITE"
		printf 'Components: %s\n' "${comps:-main}"
		if [[ -n $signed ]]; then printf 'Signed-By: %s\n' "$signed"; fi
	} >"$tmp"
	chmod 0644 "$tmp"
	mv -f "$tmp" "$BACKPORTS_FILE"
	log "added $BACKPORTS_SUITE from $uri ($BACKPORTS_FILE)"
	SOURCE_ADDED=1
}

main() {
	set -E
	trap 'on_err "$BASH_COMMAND" "$LINENO"' ERR
	[[ $(id -u) -eq 0 ]] || die "must run as root (it installs packages and writes $SOURCES_DIR)"
	if ! command -v apt-get >/dev/null || ! command -v dpkg-query >/dev/null; then
		die "apt-get and dpkg-query are required (a Debian $SUITE host is expected)"
	fi
	local codename=""
	# shellcheck source=/dev/null
	if [[ -r /etc/os-release ]]; then codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}"); fi
	[[ $codename == "$SUITE" ]] || die "this host is '${codename:-unknown}', expected Debian $SUITE"

	local need_update=0 pkg v
	ensure_backports
	need_update=$SOURCE_ADDED

	local missing_base=() missing_bpo=()
	for pkg in "${BASE_PACKAGES[@]}"; do
		[[ -n $(installed_version "$pkg") ]] || missing_base+=("$pkg")
	done
	for pkg in "${BACKPORTS_PACKAGES[@]}"; do
		v=$(installed_version "$pkg")
		if [[ -z $v ]] || ! dpkg --compare-versions "$v" ge "$BACKPORTS_MIN_VERSION"; then
			missing_bpo+=("$pkg")
		fi
	done
	((${#missing_base[@]} + ${#missing_bpo[@]} > 0)) && need_update=1

	if ((need_update)); then
		log "updating package lists"
		apt_quiet apt-get -q update
	fi
	if ((${#missing_base[@]})); then
		log "installing ${missing_base[*]}"
		apt_quiet apt-get -q -y --no-install-recommends install "${missing_base[@]}"
	fi
	if ((${#missing_bpo[@]})); then
		log "installing ${missing_bpo[*]} from $BACKPORTS_SUITE"
		apt_quiet apt-get -q -y --no-install-recommends -t "$BACKPORTS_SUITE" install "${missing_bpo[@]}"
	fi
	for pkg in "${BACKPORTS_PACKAGES[@]}"; do
		v=$(installed_version "$pkg")
		if [[ -z $v ]] || ! dpkg --compare-versions "$v" ge "$BACKPORTS_MIN_VERSION"; then
			die "$pkg is '${v:-not installed}', expected version $BACKPORTS_MIN_VERSION or newer from $BACKPORTS_SUITE"
		fi
	done
	if ((need_update == 0)); then log "all dependencies present"; fi
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
	main "$@"
fi

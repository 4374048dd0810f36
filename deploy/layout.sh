#!/bin/sh
# Lays out the root filesystem of fleetsync's scratch image: deploy/layout.sh OUT BINARY
#
# OUT gets, at the paths the image has them:
#   /usr/local/bin/fleetsync            BINARY
#   every shared library `ldd BINARY` lists, at the path ldd gives, plus the dynamic loader
#   /etc/ssl/certs/ca-certificates.crt  CA certificates (git2's OpenSSL, the AWS SDK's rustls)
#   /etc/passwd, /etc/group             root and nonroot (65532), no login shell
#   /etc/nsswitch.conf                  hosts from /etc/hosts, then DNS
#   /var/lib/fleetsync/mirrors          the default mirror dir, owned by 65532
# Nothing else: no shell, no package manager.
#
# deploy/Dockerfile's build stage runs this, and scripts/image.sh runs it on the host binary to
# stand in for that stage (podman build --build-context build=OUT), so the two cannot drift.
# POSIX sh: it runs in rust:1-bookworm and on any CI host with ldd (glibc's libc-bin).
set -eu

if [ "$#" -ne 2 ]; then
    echo "usage: $0 OUT BINARY" >&2
    exit 2
fi
out=$1
binary=$2
certs=/etc/ssl/certs/ca-certificates.crt

[ -x "$binary" ] || { echo "layout: $binary is not an executable" >&2; exit 1; }
[ -f "$certs" ] || { echo "layout: $certs missing (install ca-certificates)" >&2; exit 1; }
if [ -e "$out" ] && [ -n "$(ls -A "$out")" ]; then
    echo "layout: $out is not empty" >&2
    exit 1
fi

# copy SRC to OUT/SRC, following symlinks (a scratch image has only what is copied).
place() {
    mkdir -p "$out$(dirname "$1")"
    cp -L "$1" "$out$1"
}

mkdir -p "$out/usr/local/bin"
cp "$binary" "$out/usr/local/bin/fleetsync"
chmod 0755 "$out/usr/local/bin/fleetsync"

# `libssl.so.3 => /lib/x86_64-linux-gnu/libssl.so.3 (0x…)`: the path after `=>`;
# `/lib64/ld-linux-x86-64.so.2 (0x…)`: the loader, the binary's ELF interpreter;
# `linux-vdso.so.1 (0x…)`: the kernel's, nothing to copy. A static binary has none.
if libs=$(ldd "$binary" 2>&1); then
    if printf '%s\n' "$libs" | grep -q 'not found'; then
        printf 'layout: %s links libraries this host lacks:\n%s\n' "$binary" "$libs" >&2
        exit 1
    fi
    printf '%s\n' "$libs" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' |
        while read -r lib; do place "$lib"; done
elif ! printf '%s\n' "$libs" | grep -q 'not a dynamic executable'; then
    printf 'layout: ldd %s failed:\n%s\n' "$binary" "$libs" >&2
    exit 1
fi

place "$certs"
cat > "$out/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/sbin/nologin
nonroot:x:65532:65532:nonroot:/nonexistent:/sbin/nologin
EOF
cat > "$out/etc/group" <<'EOF'
root:x:0:
nonroot:x:65532:
EOF
echo 'hosts: files dns' > "$out/etc/nsswitch.conf"
chmod 0644 "$out/etc/passwd" "$out/etc/group" "$out/etc/nsswitch.conf"

mkdir -p "$out/var/lib/fleetsync/mirrors"
chmod 0755 "$out/var/lib/fleetsync/mirrors"
# Root can; otherwise the Dockerfile's COPY --chown gives the image the same owner.
chown 65532:65532 "$out/var/lib/fleetsync/mirrors" 2>/dev/null ||
    echo "layout: cannot chown $out/var/lib/fleetsync/mirrors (not root); the image's COPY --chown does" >&2

#!/bin/sh
# WordNet 3.0 for nltk's METEOR (metabgm-edge eval), offline, from Debian's packages.
#
#   sh scripts/setup-wordnet.sh [NLTK_DATA_DIR]      (default: .venv/nltk_data, which nltk searches
#                                                     for the venv's Python; 'make test' runs this)
#
# nltk.download() needs the internet. Debian's wordnet-base and wordnet-sense-index ship WordNet
# 3.0 in /usr/share/wordnet/; nltk wants the files under NLTK_DATA_DIR/corpora/wordnet/ as copies
# (it refuses symlinks that leave its data root). The one file nltk needs that no package ships,
# `lexnames`, is the table printed in the lexnames(5WN) man page of wordnet-base: it is written
# from there ("NN<TAB>name<TAB>category", category 1 noun, 2 verb, 3 adjective, 4 adverb), or from
# the package archive when the man page was not installed (images that drop /usr/share/man).
# Idempotent: does nothing when the copy is complete. Without apt-get it says what is missing.
set -eu

TARGET="${1:-.venv/nltk_data}/corpora/wordnet"
PACKAGES="wordnet-base wordnet-sense-index"
SRC=/usr/share/wordnet
MAN=/usr/share/man/man5/lexnames.5WN.gz

if [ -s "$TARGET/lexnames" ] && [ -s "$TARGET/data.noun" ] && [ -s "$TARGET/index.sense" ]; then
    echo "setup-wordnet: present in $TARGET"
    exit 0
fi

missing=""
for pkg in $PACKAGES; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        missing="$missing $pkg"
    fi
done
if [ -n "$missing" ]; then
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "setup-wordnet: apt-get not found; install$missing (WordNet 3.0) yourself. METEOR tests will skip." >&2
        exit 0
    fi
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
            echo "setup-wordnet: not root and no sudo; install$missing as root. METEOR tests will skip." >&2
            exit 0
        fi
    fi
    echo "setup-wordnet: installing$missing"
    export DEBIAN_FRONTEND=noninteractive
    # shellcheck disable=SC2086
    if ! $SUDO apt-get install -y -q --no-install-recommends $missing; then
        $SUDO apt-get update -q
        # shellcheck disable=SC2086
        $SUDO apt-get install -y -q --no-install-recommends $missing
    fi
fi

mkdir -p "$TARGET"
cp "$SRC"/* "$TARGET"/

manpage() {
    if [ -s "$MAN" ]; then
        zcat "$MAN"
        return
    fi
    tmp="$(mktemp -d)"
    (cd "$tmp" && apt-get download -q wordnet-base >/dev/null 2>&1) || {
        echo "setup-wordnet: $MAN is not installed and wordnet-base could not be downloaded" >&2
        rm -rf "$tmp"
        exit 1
    }
    dpkg-deb --fsys-tarfile "$tmp"/wordnet-base_*.deb | tar -xO ./usr/share/man/man5/lexnames.5WN.gz | zcat
    rm -rf "$tmp"
}

# Lines "NN<TAB>adj.all<TAB>all adjective clusters" between .TS and .TE -> "NN<TAB>adj.all<TAB>3".
manpage | awk -F '\t' '
    /^[0-9][0-9]\t/ {
        name = $2; gsub(/[ \t]+$/, "", name)
        split(name, part, ".")
        cat = (part[1] == "noun") ? 1 : (part[1] == "verb") ? 2 : (part[1] == "adj") ? 3 : (part[1] == "adv") ? 4 : 0
        if (cat == 0) { print "unknown lexicographer file " name > "/dev/stderr"; exit 1 }
        printf "%s\t%s\t%d\n", $1, name, cat
    }' > "$TARGET/lexnames.tmp"
count="$(wc -l < "$TARGET/lexnames.tmp")"
if [ "$count" -ne 45 ]; then
    echo "setup-wordnet: expected 45 lexicographer files in lexnames(5WN), found $count" >&2
    rm -f "$TARGET/lexnames.tmp"
    exit 1
fi
mv "$TARGET/lexnames.tmp" "$TARGET/lexnames"
echo "setup-wordnet: WordNet 3.0 copied to $TARGET"

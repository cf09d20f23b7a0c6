#!/bin/sh
# Installs the Debian packages the real-device tests need (tests marked audio_device):
# PortAudio, a PulseAudio daemon with its command-line tools, and ALSA's pulse plugin, so that
# PortAudio reaches a PulseAudio null sink on a machine with no sound card
# (see tests/audio_device.py). Idempotent: does nothing when everything is installed.
# Without apt-get (not Debian/Ubuntu) it only says what is missing; the device tests then skip.
set -eu

PACKAGES="libportaudio2 pulseaudio pulseaudio-utils libasound2-plugins"

missing=""
for pkg in $PACKAGES; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        missing="$missing $pkg"
    fi
done

if [ -z "$missing" ]; then
    echo "setup-audio: all present ($PACKAGES)"
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "setup-audio: apt-get not found; install$missing yourself. Tests marked audio_device will skip." >&2
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO="sudo"
    else
        echo "setup-audio: not root and no sudo; install$missing as root. Tests marked audio_device will skip." >&2
        exit 0
    fi
fi

echo "setup-audio: installing$missing"
export DEBIAN_FRONTEND=noninteractive
# shellcheck disable=SC2086
if ! $SUDO apt-get install -y -q --no-install-recommends $missing; then
    echo "setup-audio: install failed; refreshing the package lists and retrying"
    $SUDO apt-get update -q
    # shellcheck disable=SC2086
    $SUDO apt-get install -y -q --no-install-recommends $missing
fi
echo "setup-audio: done"

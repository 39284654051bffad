#!/usr/bin/env bash
# Regenerates the built-in recording notice (firmware/data/notice_default.wav):
# a beep, then a Korean sentence spoken by espeak-ng, 8 kHz mono 16-bit, peak -3 dBFS.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
espeak-ng -v ko -s 150 -w "$tmp/say.wav" "안녕하십니까. 이 통화는 민원 처리와 직원 보호를 위하여 녹음됩니다."
sox -n -r 8000 -c 1 -b 16 "$tmp/beep.wav" synth 0.25 sine 1000 fade 0.01 0.25 0.01
sox -n -r 8000 -c 1 -b 16 "$tmp/gap.wav" trim 0 0.25
sox "$tmp/say.wav" -r 8000 -c 1 -b 16 "$tmp/say8.wav"
sox "$tmp/beep.wav" "$tmp/gap.wav" "$tmp/say8.wav" -b 16 firmware/data/notice_default.wav norm -3
sox "$tmp/beep.wav" -b 16 firmware/data/notice_beep.wav norm -3
soxi -D firmware/data/notice_default.wav

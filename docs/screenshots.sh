#!/usr/bin/env bash
# Screenshots of the TensorBoard views (docs/tensorboard.md), from a real run, in headless Chromium.
#
#   docs/screenshots.sh            # runs the demo's fine-tuning with --histograms=1 --profile=5:15
#   docs/screenshots.sh RUN_DIR    # or uses a finished run
#
# Needs Debian's chromium (apt-get install -y chromium) and the venv (make setup). No Profile
# tab: its page loads Google Charts from www.gstatic.com before anything else, so it stays blank
# without internet access.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
OUT=docs/images
work=$(mktemp -d)
trap 'kill $server 2>/dev/null || true; rm -rf "$work"' EXIT
server=

run=${1:-}
if [[ -z $run ]]; then
  "$BIN/python" -c "from distft.demo import make_demo_data; make_demo_data('$work/demo')"
  run=$work/run
  "$BIN/distft" train --np=2 --model="$work/demo/base_model.keras" \
    --data="$work/demo/shards/train-*.tfrecord" --val_data="$work/demo/shards/val-*.tfrecord" \
    --num_classes=5 --unfreeze=last:2 --epochs=8 --log_every=4 --histograms=1 --profile=5:15 \
    --output_dir="$run"
fi

port=$("$BIN/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$BIN/tensorboard" --logdir "$run/tensorboard" --host 127.0.0.1 --port "$port" >"$work/tb.log" 2>&1 &
server=$!
until curl -sf "http://127.0.0.1:$port/data/runs" | grep -q rank_1; do sleep 1; done

shot() {  # NAME URL-FRAGMENT
  chromium --headless --no-sandbox --disable-gpu --disable-background-networking \
    --disable-component-update --disable-sync --no-first-run --hide-scrollbars \
    --user-data-dir="$work/chrome" --window-size=1400,900 --virtual-time-budget=20000 \
    --screenshot="$OUT/$1.png" "http://127.0.0.1:$port/$2" 2>/dev/null
}
mkdir -p "$OUT"
shot tb-ranks "#custom_scalars"
shot tb-rank-scalars "?runFilter=rank#scalars&tagFilter=ranks%2F(busy|allreduce)"
shot tb-histograms "#histograms&tagFilter=distft_head%2Fkernel%7Cconv2%2Fkernel"
shot tb-moved "#scalars&tagFilter=moved%7Cclass_accuracy"
shot tb-confusion "#images"
shot tb-config "#text"
shot tb-graph "#graphs"
ls -l "$OUT"/tb-*.png

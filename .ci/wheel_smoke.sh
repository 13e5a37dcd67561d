#!/usr/bin/env bash
# CI: the package as users get it. Build the wheel, install it (not editable) into a fresh virtualenv with the
# CPU torch, and from an empty temporary folder run every job: generate a tiny corpus (its card parses, the
# folder loads with datasets.load_dataset), eval with the bundled agent, train the tiny recipe for two steps
# through `anymdp-agent train` (accelerate), and load the bundled and the trained agent with remote code in a
# clean interpreter that never imports anymdp_agent. Offline throughout (HF_HUB_OFFLINE=1), no stdin.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
TORCH="${TORCH:-torch==2.13.0}"   # pinned CPU build, installed first (never an unpinned torch)
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 OMP_NUM_THREADS=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORK="$(mktemp -d "${TMPDIR:-/tmp}/anymdp-wheel-smoke.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
export HF_HOME="$WORK/hf-home"    # remote-code modules land here, not in the user's cache
T0=$SECONDS
step() { echo "== [$((SECONDS - T0)) s] $*"; }

step "build the wheel from the working tree (tracked and untracked, not ignored, files)"
mkdir -p "$WORK/src" "$WORK/dist"
if git -C "$ROOT" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    git -C "$ROOT" ls-files -co --exclude-standard -z | (cd "$ROOT" && tar --null -T - -cf -) | tar -xf - -C "$WORK/src"
else
    tar -C "$ROOT" --exclude=.venv --exclude=.git --exclude=runs --exclude=results -cf - . | tar -xf - -C "$WORK/src"
fi
"$PYTHON" -m venv "$WORK/venv"
V="$WORK/venv/bin"
"$V/python" -m pip install --quiet "$TORCH"
"$V/python" -m pip wheel --quiet --no-deps --wheel-dir "$WORK/dist" "$WORK/src"
WHEEL="$(ls "$WORK"/dist/anymdp_agent-*.whl)"
"$V/python" - "$WHEEL" "$WORK/src" <<'PY'
import sys, zipfile
names = set(zipfile.ZipFile(sys.argv[1]).namelist())
need = ["anymdp_agent/training/train.py", "anymdp_agent/training/recipes.py", "anymdp_agent/training/configs/tiny.yaml",
        "anymdp_agent/training/configs/cpu-default.yaml", "anymdp_agent/training/configs/gpu-large.yaml",
        "anymdp_agent/cards/model_card.md", "anymdp_agent/cards/dataset_card.md",
        "anymdp_agent/training/meta_rl.py", "anymdp_agent/training/accelerate/cpu-2proc.yaml"]
import pathlib
for folder in sorted(pathlib.Path(sys.argv[2]).glob("anymdp_agent/pretrained/*/config.json")):  # every bundled agent
    need += [f"anymdp_agent/pretrained/{folder.parent.name}/{f}" for f in ("model.safetensors", "README.md")]
missing = [n for n in need if n not in names]
assert not missing, f"the wheel lacks {missing}"
print(f"wheel: {len(names)} files, all of {len(need)} checked present")
PY

step "install the wheel (not editable) into the fresh virtualenv"
"$V/python" -m pip install --quiet "$WHEEL"
mkdir "$WORK/empty"
cd "$WORK/empty"
PKG="$("$V/python" -c 'import anymdp_agent, os; print(os.path.dirname(anymdp_agent.__file__))')"
case "$PKG" in "$WORK/venv/"*) ;; *) echo "anymdp_agent imported from $PKG, not from the installed wheel"; exit 1;; esac

step "generate a tiny corpus with its card, then load it with datasets"
"$V/anymdp-agent" generate --out corpus --tasks 4 --seq-len 64 --n-states 8 --tasks-per-shard 2 --no-progress
"$V/python" - <<'PY'
from datasets import load_dataset
from huggingface_hub import DatasetCard
card = DatasetCard.load("corpus/README.md")
assert card.data.configs[0]["data_files"] == [{"split": "train", "path": "data/train-*"}], card.data.configs
ds = load_dataset("corpus")
assert ds["train"].num_rows == 4 and len(ds["train"][0]["observations"]) == 64, ds
print(f"corpus: {ds['train'].num_rows} sequences, card: {card.data.pretty_name}")
PY

step "eval the bundled agent on a tiny suite (writes the JSON and the PNG)"
"$V/anymdp-agent" eval --suite anymdp-8 --learners agent,agent:anymdp-agent-sequence-cpu,mbrl:optimism=2,mbrl:known=transitions,mbrl:prior=bundled,random --tasks 2 \
    --steps 100 --window 50 --out results --no-progress
test -s results/eval-anymdp-8.json && test -s results/eval-anymdp-8.png
for suite in riverswim-6 dirichlet-8 bandit-3; do  # the families the default agent's training never draws from
    "$V/anymdp-agent" eval --suite "$suite" --learners agent,mbrl --tasks 2 --steps 100 --window 50 --out results \
        --no-progress
    test -s "results/eval-$suite.json"
done

step "meta-train the planner's transition prior on a tiny budget and evaluate the planner with it"
"$V/python" -m anymdp_agent.training.transition_prior --out runs/prior --scale 0.05 --steps 300 --iters 20 --eval_every 10
"$V/anymdp-agent" eval --suite anymdp-8 --learners mbrl,mbrl:prior=runs/prior --tasks 2 --steps 100 --window 50 \
    --out results-prior --no-progress
test -s results-prior/eval-anymdp-8.json

step "train the tiny recipe for two steps through accelerate"
"$V/anymdp-agent" train --cpu -- --config tiny --max_steps 2 --save_every 2 --eval_every 2 --output_dir runs/tiny
CKPT="runs/tiny/checkpoints/0000002/pretrained_model"
"$V/python" - "$CKPT" <<'PY'
import sys
from huggingface_hub import ModelCard
card = ModelCard.load(f"{sys.argv[1]}/README.md")
assert card.data.library_name == "transformers" and card.data.eval_results, card.data
print(f"trained checkpoint card: {len(card.data.eval_results)} eval results, {card.data.eval_results[0].dataset_type}")
PY

step "push and push-dataset accept what the package wrote (offline, so the one commit fails cleanly: exit 1)"
for cmd in "push --checkpoint $CKPT --repo-id someone/tiny-agent" "push-dataset --folder corpus --repo-id someone/corpus"; do
    set +e
    "$V/anymdp-agent" $cmd --token hf_offline 2> push.err
    rc=$?
    set -e
    if [ "$rc" != 1 ] || ! grep -q "nothing was committed" push.err; then
        echo "anymdp-agent $cmd: exit $rc, expected 1 (checks passed, network refused):"; cat push.err; exit 1
    fi
done

step "load the bundled and the trained agent with remote code in a clean interpreter"
"$V/python" -I - "$PKG"/pretrained/*/ "$CKPT" <<'PY'
import sys
import torch
from transformers import AutoModel
for folder in sys.argv[1:]:
    model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    assert type(model).__module__.startswith("transformers_modules."), type(model).__module__
    with torch.no_grad():
        out = model(torch.tensor([[0, 1, 2]]), torch.tensor([[1, 0, 2]]), torch.tensor([[0.0, 1.0, 0.5]]))
    assert out.policy_logits.shape[-1] == model.config.num_actions
    state = model.initial_state(2, num_observations=8)
    for t in range(6):  # act without a temperature: the checkpoint's own sampling schedule
        action, _, state = model.act(state, torch.tensor([t % 8, (t + 3) % 8]))
        state = model.observe(state, action, torch.tensor([0.0, 1.0]), torch.tensor([(t + 1) % 8, (t + 4) % 8]),
                              torch.tensor([False, t == 3]), torch.tensor([False, False]))
    assert model.sampling_temperature(6).item() <= model.config.temperature_start
    print(f"{folder}: {type(model).__name__} ({model.config.backbone}) from its own code")
leaked = sorted(m for m in sys.modules if m.split(".")[0] == "anymdp_agent")
assert not leaked, leaked
PY
step "wheel smoke passed"

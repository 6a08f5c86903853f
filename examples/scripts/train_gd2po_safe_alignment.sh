#!/usr/bin/env bash
# Helpfulness–safety alignment with a reward model and a cost model, each its own Ray actor group on its own
# GPUs, GD²PO with the SNR filter (τ = 0.8, ε = 1e-6), in the GD²PO authors' settings: policy
# Qwen2.5-7B-Instruct, Alpaca prompts, 512 prompts × 4 rollouts per step, mini-batches of 128 prompts, lr 1e-6
# constant, no KL, prompts up to 512 and responses up to 1024 tokens, temperature 0.7, 100 steps.
#
#   python examples/data/prepare_safe_alignment.py alpaca_data.json --output data/safe_alignment/train.jsonl
#   bash examples/scripts/train_gd2po_safe_alignment.sh        # 16 GPUs: actor+ref 8, vLLM 4, reward 2, cost 2
#   GD2PO_DRY_RUN=1 bash examples/scripts/train_gd2po_safe_alignment.sh
#
# Models (defaults: the GD²PO authors' pair, align-anything score models on Qwen2.5-7B, higher = better on both):
#   REWARD_MODEL=Artessay/Qwen2.5-7B-SafeRLHF-RM, COST_MODEL=Artessay/Qwen2.5-7B-SafeRLHF-CM, COST_WEIGHT=+1
#     (the CM scores safety: higher = safer, so it is added as a reward);
#   Beaver alternative: REWARD_MODEL=PKU-Alignment/beaver-7b-unified-reward
#     COST_MODEL=PKU-Alignment/beaver-7b-unified-cost COST_WEIGHT=-1 (Beaver's cost: higher = more harmful).
# Both families keep their value head as `score_head` (VALUE_HEAD, passed as --ds.value_head_prefix; OpenRLHF's
# default is `score`). Not verified offline: check the README's "Safe-alignment models" list before a long run.
# The reward and cost models may use another tokenizer or chat template than the policy: REWARD_TEMPLATE=own
# (default) re-renders each conversation with every model's own chat template (the prompts' labels carry the
# conversation; prepare_safe_alignment.py writes them); REWARD_TEMPLATE=policy scores the policy's tokens as they
# are and refuses models whose vocabulary differs.
#
# Baselines: train_gd2po_safe_alignment_hard.sh, train_gdpo_safe_alignment.sh, train_grpo_safe_alignment.sh
# (GRPO on the weighted sum reward − cost: --advantage_estimator gdpo --gd2po.sum_rewards). The cost as a
# Lagrangian budget instead of a fixed weight, for any of them: train_gd2po_safe_alignment_budget.sh.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)

MODEL=${MODEL:-Qwen/Qwen2.5-7B-Instruct}
REWARD_MODEL=${REWARD_MODEL:-Artessay/Qwen2.5-7B-SafeRLHF-RM}
COST_MODEL=${COST_MODEL:-Artessay/Qwen2.5-7B-SafeRLHF-CM}
COST_WEIGHT=${COST_WEIGHT:-1}                                 # +1: a safety score (authors); -1: a harm cost (Beaver)
VALUE_HEAD=${VALUE_HEAD:-score_head}                          # the models' value-head name
REWARD_TEMPLATE=${REWARD_TEMPLATE:-own}                       # own | policy
DATA=${DATA:-$ROOT/data/safe_alignment/train.jsonl}          # from examples/data/prepare_safe_alignment.py
ESTIMATOR=${ESTIMATOR:-gd2po}                                 # gd2po | gdpo | grpo (GRPO on the weighted sum)
FILTER=${FILTER:-snr}
TAU=${TAU:-0.8}
SNR_EPS=${SNR_EPS:-1e-6}
ACTOR_NODES=${ACTOR_NODES:-1}
ACTOR_GPUS_PER_NODE=${ACTOR_GPUS_PER_NODE:-8}
VLLM_ENGINES=${VLLM_ENGINES:-4}
VLLM_TP=${VLLM_TP:-1}
REWARD_GPUS=${REWARD_GPUS:-2}
COST_GPUS=${COST_GPUS:-2}
RUN_NAME=$ESTIMATOR
if [ "$ESTIMATOR" = gd2po ]; then RUN_NAME=gd2po_$FILTER; fi
OUTPUT_DIR=${OUTPUT_DIR:-$ROOT/ckpt/safe_alignment_$RUN_NAME${RUN_SUFFIX:-}}

ESTIMATOR_ARGS=(--algo.advantage.estimator "$ESTIMATOR")
GD2PO_ARGS=(--gd2po.config "$ROOT/configs/safe_alignment.yaml" --gd2po.reward_weights 1 "$COST_WEIGHT"
            --gd2po.reward_chat_template "$REWARD_TEMPLATE"
            --cost.model_name_or_path "$COST_MODEL" --cost.num_nodes 1 --cost.num_gpus_per_node "$COST_GPUS")
SNR_ARGS=()  # τ and ε act only with the snr filter (the plugin refuses them otherwise)
if [ "$FILTER" = snr ]; then SNR_ARGS=(--gd2po.snr_threshold "$TAU" --gd2po.snr_eps "$SNR_EPS"); fi
case "$ESTIMATOR" in
  gd2po) ESTIMATOR_ARGS+=("${GD2PO_ARGS[@]}" --gd2po.filter "$FILTER" "${SNR_ARGS[@]}") ;;
  gdpo) ESTIMATOR_ARGS+=("${GD2PO_ARGS[@]}" --gd2po.filter none) ;;
  # OpenRLHF's group_norm cannot add a cost model to the reward: GDPO's plumbing with one normalisation of the sum.
  grpo) ESTIMATOR_ARGS=(--algo.advantage.estimator gdpo --gd2po.sum_rewards "${GD2PO_ARGS[@]}" --gd2po.filter none) ;;
  *) echo "ESTIMATOR must be gd2po, gdpo or grpo, got '$ESTIMATOR'" >&2; exit 2 ;;
esac

python3 -m openrlhf.cli.train_ppo_ray \
  --actor.model_name_or_path "$MODEL" \
  --actor.num_nodes "$ACTOR_NODES" --actor.num_gpus_per_node "$ACTOR_GPUS_PER_NODE" \
  --ref.num_nodes "$ACTOR_NODES" --ref.num_gpus_per_node "$ACTOR_GPUS_PER_NODE" --train.colocate_actor_ref \
  --reward.model_name_or_path "$REWARD_MODEL" --reward.num_nodes 1 --reward.num_gpus_per_node "$REWARD_GPUS" \
  --vllm.num_engines "$VLLM_ENGINES" --vllm.tensor_parallel_size "$VLLM_TP" --vllm.gpu_memory_utilization 0.85 \
  --data.prompt_dataset "$DATA" --data.input_key input --data.label_key label --data.apply_chat_template \
  --data.max_len 1536 --rollout.max_new_tokens 1024 --data.max_samples 51200 \
  --rollout.batch_size 512 --rollout.n_samples_per_prompt 4 --rollout.temperature 0.7 --rollout.micro_batch_size 16 \
  --train.batch_size 512 --train.micro_batch_size 4 --train.max_epochs 1 --train.num_episodes 1 \
  --actor.adam.lr 1e-6 --actor.lr_scheduler constant --actor.lr_warmup_ratio 0 --algo.kl.init_coef 0 \
  "${ESTIMATOR_ARGS[@]}" --ds.value_head_prefix "$VALUE_HEAD" \
  --ds.zero_stage 3 --ds.param_dtype bf16 --actor.gradient_checkpointing_enable \
  --logger.tensorboard_dir "$OUTPUT_DIR/tensorboard" \
  --ckpt.output_dir "$OUTPUT_DIR" --ckpt.path "$OUTPUT_DIR/ckpt" --ckpt.save_steps 20 \
  "$@"

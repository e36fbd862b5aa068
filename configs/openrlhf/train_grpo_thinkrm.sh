#!/usr/bin/env bash
# GRPO with thinkrm's gated thinking reward, for OpenRLHF 0.11 (`python -m openrlhf.cli.train_ppo_ray`),
# one node with 8 GPUs, everything colocated (actor, reference, vLLM engines take turns):
#
#   POLICY=Qwen/Qwen3-8B DATA=/data/math-rl.jsonl bash configs/openrlhf/train_grpo_thinkrm.sh
#
# DATA: a dataset OpenRLHF can load (JSONL, parquet, a Hugging Face name) with a `prompt` column (the
# problem as text, or chat messages) and an `answer` column (the gold answer).
#
# OpenRLHF imports the reward file given to --reward.remote_url and calls its reward_func for one sample at a
# time, from threads of the vLLM engine actors; the reward options travel as environment variables, since it
# passes none to the file. Ray workers started by this driver inherit them; on a cluster started with
# `ray start`, pass them with `ray job submit --runtime-env-json '{"env_vars": {"THINKRM_SCORER": ...}}'`.
#
# Every flag is checked against train_ppo_ray.py's argparse by tests/test_rl_configs.py.
set -euo pipefail

: "${POLICY:?set POLICY to the policy model (a Hugging Face name or a path)}"
: "${DATA:?set DATA to the prompt dataset}"
OUT=${OUT:-./out/grpo-thinkrm}

export THINKRM_SCORER=${THINKRM_SCORER:-lite}
export THINKRM_ALPHA=${THINKRM_ALPHA:-0.2}
# a sample arrives alone, so there is no group to standardise over: the scorer's calibration places z
export THINKRM_NORMALIZE=${THINKRM_NORMALIZE:-calibrated}
# math (math-verify), choice, or llm:URL[,URL...] for a general-verifier server
export THINKRM_VERIFIER=${THINKRM_VERIFIER:-math}
# seconds per answer check; a generative llm: verifier needs about 60
export THINKRM_VERIFY_TIMEOUT=${THINKRM_VERIFY_TIMEOUT:-5}
if [ -n "${THINKRM_CALIBRATION:-}" ]; then export THINKRM_CALIBRATION; fi

REWARD_FILE=$(python -c 'import thinkrm.openrlhf_reward as m; print(m.__file__)')

# group_norm is GRPO's advantage: (r - group mean) / group std over the --rollout.n_samples_per_prompt
# completions of a prompt.
# Dynamic filtering reads `scores` (here r_v, 0/1): the range 0 1.01 drops groups with no right answer
# (nothing to learn) but keeps all-right groups, whose only signal is the thinking reward (the default 0 1
# would drop them too).
python -m openrlhf.cli.train_ppo_ray \
    --actor.model_name_or_path "$POLICY" \
    --reward.remote_url "$REWARD_FILE" \
    --data.prompt_dataset "$DATA" \
    --data.input_key prompt \
    --data.label_key answer \
    --data.apply_chat_template \
    --data.max_len 10240 \
    --rollout.max_new_tokens 8192 \
    --actor.num_nodes 1 \
    --actor.num_gpus_per_node 8 \
    --ref.num_nodes 1 \
    --ref.num_gpus_per_node 8 \
    --vllm.num_engines 4 \
    --vllm.tensor_parallel_size 2 \
    --vllm.gpu_memory_utilization 0.6 \
    --vllm.enable_sleep \
    --ds.enable_sleep \
    --train.colocate_all \
    --algo.advantage.estimator group_norm \
    --rollout.n_samples_per_prompt 8 \
    --rollout.batch_size 128 \
    --rollout.micro_batch_size 8 \
    --rollout.temperature 1.0 \
    --train.batch_size 128 \
    --train.micro_batch_size 4 \
    --train.max_epochs 1 \
    --train.num_episodes 1 \
    --algo.kl.use_loss \
    --algo.kl.estimator k3 \
    --algo.kl.init_coef 0.001 \
    --algo.dynamic_filtering_enable \
    --algo.dynamic_filtering_range 0 1.01 \
    --actor.adam.lr 1e-6 \
    --actor.gradient_checkpointing_enable \
    --ds.zero_stage 3 \
    --ds.param_dtype bf16 \
    --ds.packing_samples \
    --ds.attn_implementation flash_attention_2 \
    --ckpt.output_dir "$OUT" \
    --ckpt.save_steps 50 \
    --logger.logging_steps 1 \
    "$@"

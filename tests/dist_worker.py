"""Run by tests/test_distributed.py under `accelerate launch --multi_gpu --num_processes 2`:
trains, then each process saves its own parameters so the test can compare them."""

import sys

import torch
from safetensors.torch import save_file

from vla_structppo.config import load_config
from vla_structppo.train.ppo import train

out_dir = sys.argv[1]
result = train(load_config(None, sys.argv[2:]))
from accelerate import PartialState  # noqa: E402

rank = PartialState().process_index
state = {k: v.detach().clone().contiguous() for k, v in result.agent.state_dict().items()}  # tied weights: copies
save_file(state, f"{out_dir}/params_rank{rank}.safetensors")
if rank == 0:
    torch.save([r.get("rollout/normalized_return") for r in result.history], f"{out_dir}/curve.pt")
# each process's own count of kept groups per update (GRPO: the processes differ)
torch.save([r.get("rollout/groups_kept") for r in result.history], f"{out_dir}/groups_kept_rank{rank}.pt")

"""Orchestration: the PPO loop on Accelerate, rollouts, checkpoints."""

"""``vla-structppo VERB RECIPE [key.sub=value ...]``: parse, load + validate the config, call one entry point.

Config errors surface before torch, transformers or a simulator is imported.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from typing import NoReturn

from .config import ConfigError, TrainConfig, field_docs, load_config, to_yaml

VERBS = ("train", "sft", "demos", "eval", "pipeline", "push", "config")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vla-structppo",
        description="Structured-advantage PPO for vision-language-action models.",
        epilog="Overrides are key.sub=value pairs, e.g. ppo.learning_rate=1e-3 credit.mode=joint. "
        "`vla-structppo config --keys` lists every key with its meaning.",
    )
    sub = parser.add_subparsers(dest="verb", required=True)
    for verb, text in (("train", "train with PPO"),
                       ("sft", "behaviour-clone the demonstrations at sft.dataset into the VLA"),
                       ("demos", "record scripted-expert demonstrations to sft.dataset (demos.num_episodes per "
                                 "task; the structured task: sft.max_samples steps)"),
                       ("eval", "evaluate eval.checkpoint on fixed seeds (success rate with a Wilson interval, videos) into "
                                "<run>/eval/"),
                       ("pipeline", "demos -> SFT -> PPO -> eval before/after PPO, in one run dir"),
                       ("config", "print the resolved config and exit")):
        p = sub.add_parser(verb, help=text)
        p.add_argument("recipe", nargs="?", help="YAML recipe (e.g. recipes/structured/counterfactual.yaml)")
        p.add_argument("overrides", nargs="*", help="key.sub=value overrides")
        if verb == "config":
            p.add_argument("--keys", action="store_true", help="list every config key and its meaning")
    push = sub.add_parser("push", help="upload a run's checkpoint, eval results and model card to the Hugging Face Hub")
    push.add_argument("run_dir", help="the run dir (its checkpoints/last unless checkpoint=NAME)")
    push.add_argument("args", nargs="*", help="repo_id=org/name [private=true] [revision=BRANCH] [checkpoint=NAME] "
                      "[commit_message=TEXT]; the token comes from HF_TOKEN or `hf auth login`, never the command line")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    if args.verb == "push":  # a run dir + its own keys, not a recipe + overrides
        from .hub import main_push

        main_push(args.run_dir, args.args)
        return
    recipe = args.recipe
    overrides = list(args.overrides)
    if recipe is not None and "=" in recipe and not recipe.endswith((".yaml", ".yml")):
        overrides.insert(0, recipe)  # no recipe, only overrides
        recipe = None
    if args.verb == "config" and args.keys:
        for key, doc in field_docs().items():
            print(f"{key:40s} {doc}")
        return
    try:
        cfg = load_config(recipe, overrides)
    except ConfigError as err:
        print(f"vla-structppo: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    if args.verb == "config":
        print(to_yaml(cfg), end="")
        return
    if args.verb == "demos":
        _demos(cfg)
        return
    if args.verb == "sft":
        _sft(cfg)
        return
    if args.verb == "eval":
        from .eval import main_eval

        main_eval(cfg)
        return
    if args.verb == "pipeline":
        from .pipeline import run_pipeline

        try:
            run_pipeline(cfg)
        except _user_errors() as err:
            _fail(err)
        return
    # heavy imports only now that the config is known to be good
    from .train.ppo import train

    try:
        result = train(cfg, command=shlex.join(["vla-structppo", *(sys.argv[1:] if argv is None else argv)]))
    except _user_errors() as err:
        _fail(err)
    from accelerate import PartialState

    final = result.final
    if final and PartialState().is_main_process:
        shown = {k: round(v, 4) for k, v in final.items()
                 if k in ("rollout/ep_return_mean", "rollout/normalized_return", "rollout/success_rate")}
        print(f"done: {result.run_dir}  {shown}")


def _user_errors() -> tuple[type[Exception], ...]:
    """Errors that mean 'fix your input' (printed without a traceback, exit 2). FileNotFoundError covers
    a checkpoint missing a file (CheckpointError, the VLA preflight's VLACheckpointError)."""
    from .envs.demos import DemoDatasetError
    from .hub import HubError
    from .policies.action_tokenizer import ActionTokenizerError
    from .policies.vla_arch import UnsupportedArchitectureError

    return (ConfigError, ActionTokenizerError, UnsupportedArchitectureError, FileNotFoundError, HubError,
            DemoDatasetError)


def _fail(err: Exception) -> NoReturn:
    print(f"vla-structppo: error: {err}", file=sys.stderr)
    raise SystemExit(2) from None


def _demos(cfg: TrainConfig) -> None:
    if not cfg.sft.dataset:
        _fail(ConfigError("demos writes to sft.dataset: set sft.dataset=PATH"))
    from .envs.demos import record_demos, save_demos

    try:
        ds = record_demos(cfg)
        path = save_demos(ds, cfg.sft.dataset, cfg)
    except _user_errors() as err:
        _fail(err)
    print(f"wrote {len(ds)} expert steps to {path}")


def _sft(cfg: TrainConfig) -> None:
    # heavy imports only now that the config is known to be good
    from .train.sft import sft

    try:
        result = sft(cfg)
    except _user_errors() as err:
        _fail(err)
    from accelerate import PartialState

    if PartialState().is_main_process:
        final = result.final
        print(f"done: {result.run_dir}  token_accuracy={final.get('sft/final_token_accuracy', float('nan')):.4f}  "
              f"l1={final.get('sft/final_l1', float('nan')):.4f}  checkpoint={result.checkpoint}")


if __name__ == "__main__":
    main()

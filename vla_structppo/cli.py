"""``vla-structppo VERB RECIPE [key.sub=value ...]``: parse, load + validate the config, call one entry point.

Config errors surface before torch, transformers or a simulator is imported.
"""

from __future__ import annotations

import argparse
import sys

from .config import ConfigError, field_docs, load_config, to_yaml

VERBS = ("train", "config")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vla-structppo",
        description="Structured-advantage PPO for vision-language-action models.",
        epilog="Overrides are key.sub=value pairs, e.g. ppo.learning_rate=1e-3 credit.mode=joint. "
        "`vla-structppo config --keys` lists every key with its meaning.",
    )
    sub = parser.add_subparsers(dest="verb", required=True)
    for verb, text in (("train", "train with PPO"), ("config", "print the resolved config and exit")):
        p = sub.add_parser(verb, help=text)
        p.add_argument("recipe", nargs="?", help="YAML recipe (e.g. recipes/structured/counterfactual.yaml)")
        p.add_argument("overrides", nargs="*", help="key.sub=value overrides")
        if verb == "config":
            p.add_argument("--keys", action="store_true", help="list every config key and its meaning")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
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
    # heavy imports only now that the config is known to be good
    from .train.checkpoint import CheckpointError
    from .train.ppo import train

    try:
        result = train(cfg)
    except (ConfigError, CheckpointError) as err:
        print(f"vla-structppo: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    from accelerate import PartialState

    final = result.final
    if final and PartialState().is_main_process:
        shown = {k: round(v, 4) for k, v in final.items()
                 if k in ("rollout/ep_return_mean", "rollout/normalized_return", "rollout/success_rate")}
        print(f"done: {result.run_dir}  {shown}")


if __name__ == "__main__":
    main()

"""``vla-structppo VERB RECIPE [key.sub=value ...]``: parse, load + validate the config, call one entry point.

Config errors surface before torch, transformers or a simulator is imported. This is the one place that
turns an error into what the user reads: a :class:`~vla_structppo.errors.UserError` (a bad input, with
its fix) is printed as one line and exits 2; anything else keeps its traceback.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from typing import NoReturn

from .config import ConfigError, TrainConfig, explicit_settings, field_docs, load_config, to_yaml
from .errors import UserError

VERBS = ("train", "sft", "demos", "eval", "pipeline", "push", "predict", "convert", "config")


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
    predict = sub.add_parser("predict", help="one greedy action of a checkpoint / model for a picture and an instruction")
    predict.add_argument("model", help="a run's checkpoint (or run dir, or hf://org/name), a local model dir or a Hub id")
    predict.add_argument("args", nargs="*", help='image=PATH instruction="..." [model.unnorm_key=KEY] '
                         "[model.dtype=float32|bfloat16] [device=cpu|cuda] ...")
    predict.add_argument("--json", action="store_true", help="print token_ids, bins, logprobs and action as JSON")
    convert = sub.add_parser("convert", help="convert demonstrations into a dataset sft.dataset reads")
    convert.add_argument("kind", choices=("libero",), help="libero: the benchmark's HDF5 demos (OpenVLA preprocessing)")
    convert.add_argument("source", help="a <task>_demo.hdf5 file or a suite dir of them")
    convert.add_argument("args", nargs="*", help="out=DIR [camera=agentview_rgb] [gripper=raw|openvla] "
                         "[noops=drop|keep]")
    push = sub.add_parser("push", help="upload a run's checkpoint, eval results and model card to the Hugging Face Hub")
    push.add_argument("run_dir", help="the run dir (its checkpoints/last unless checkpoint=NAME)")
    push.add_argument("args", nargs="*", help="repo_id=org/name [private=true] [revision=BRANCH] [checkpoint=NAME] "
                      "[commit_message=TEXT]; the token comes from HF_TOKEN or `hf auth login`, never the command line")
    return parser


def _key_values(args: list[str], allowed: dict[str, str], verb: str) -> dict[str, str]:
    """``key=value`` arguments of a verb that takes no recipe; unknown keys are named with the valid ones."""
    out = {}
    for arg in args:
        key, sep, value = arg.partition("=")
        if not sep or key not in allowed:
            raise ConfigError(f"{verb}: {arg!r} is not one of {', '.join(f'{k}=' for k in allowed)}")
        out[key] = value
    return {**{k: v for k, v in allowed.items() if v}, **out}


def _convert(kind: str, source: str, args: list[str]) -> None:
    from .data.libero_hdf5 import convert_libero_hdf5

    opts = _key_values(args, {"out": "", "camera": "agentview_rgb", "gripper": "raw", "noops": "drop"}, "convert")
    if not opts.get("out"):
        raise ConfigError("convert needs out=DIR (the dataset to write; then train with sft.dataset=DIR)")
    done = convert_libero_hdf5(source, opts["out"], camera=opts["camera"], gripper=opts["gripper"], noops=opts["noops"])
    print(f"converted {done['episodes']} demos from {done['files']} file(s): {done['kept']} of {done['steps']} steps "
          f"kept ({done['steps'] - done['kept']} no-ops dropped) -> {done['out']}")


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    command = shlex.join(["vla-structppo", *(sys.argv[1:] if argv is None else argv)])
    try:
        _run(args, command)
    except UserError as err:
        _fail(err)


def _run(args: argparse.Namespace, command: str) -> None:
    if args.verb == "push":  # a run dir + its own keys, not a recipe + overrides
        _push(args.run_dir, args.args)
        return
    if args.verb == "convert":  # a source + its own keys, not a recipe
        _convert(args.kind, args.source, args.args)
        return
    if args.verb == "predict":  # a model + its inputs, not a recipe
        from .predict import format_action, predict, predict_inputs

        inputs, overrides = predict_inputs(args.args)
        print(format_action(predict(args.model, inputs["image"], inputs["instruction"], overrides,
                                    wrist=inputs.get("wrist"), state=inputs.get("state")), args.json))
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
    cfg = load_config(recipe, overrides)
    if args.verb == "train" and cfg.resume and recipe is None:
        from .checkpoints.rundir import config_to_resume

        cfg = config_to_resume(cfg.resume, overrides)  # the run's own settings, continued
    if args.verb in ("train", "sft", "pipeline"):
        _thread_hint(cfg)
    if args.verb == "config":
        print(to_yaml(cfg), end="")
    elif args.verb == "demos":
        _demos(cfg)
    elif args.verb == "sft":
        _sft(cfg)
    elif args.verb == "eval":
        from .eval import run_eval

        # every env key the recipe or the command line sets wins over the checkpoint's own env
        run_eval(cfg, env_settings=explicit_settings(recipe, overrides).get("env"), command=command)
    elif args.verb == "pipeline":
        from .pipeline import run_pipeline

        run_pipeline(cfg)
    else:
        _train(cfg, command)


def _thread_hint(cfg: TrainConfig) -> None:
    """On a CPU run, an unset OMP_NUM_THREADS lets torch and the simulators oversubscribe the cores (4 updates of
    the tiny-VLA recipe took 64 s instead of 18 s on 2 cores)."""
    import os

    gpu = cfg.device == "cuda" or (cfg.device == "auto" and os.path.exists("/dev/nvidia0"))
    if not gpu and "OMP_NUM_THREADS" not in os.environ:
        print(f"vla-structppo: hint: OMP_NUM_THREADS is not set; on a CPU run set it to the number of cores, e.g. "
              f"OMP_NUM_THREADS={os.cpu_count() or 1} vla-structppo ... (oversubscribed threads run several times "
              "slower)", file=sys.stderr)


def _fail(err: Exception) -> NoReturn:
    print(f"vla-structppo: error: {err}", file=sys.stderr)
    raise SystemExit(2) from None


def _train(cfg: TrainConfig, command: str) -> None:
    # heavy imports only now that the config is known to be good
    from .train.ppo import train

    result = train(cfg, command=command)
    from accelerate import PartialState

    if result.finished_before is not None:
        print(f"{result.run_dir} already finished (update {result.finished_before} of {cfg.num_updates}); nothing "
              "to do. To train it longer, resume with a larger ppo.total_timesteps")
        return
    final = result.final
    if final and PartialState().is_main_process:
        shown = {k: round(v, 4) for k, v in final.items()
                 if k in ("rollout/ep_return_mean", "rollout/normalized_return", "rollout/success_rate")}
        print(f"done: {result.run_dir}  {shown}")


def _demos(cfg: TrainConfig) -> None:
    if not cfg.sft.dataset:
        raise ConfigError("demos writes to sft.dataset: set sft.dataset=PATH")
    from .data.demos import recording_of, save_demos
    from .data.record import record_demos

    ds = record_demos(cfg)
    if cfg.demos.format == "lerobot":
        from .data.lerobot_write import write_lerobot

        path = write_lerobot(ds, cfg.sft.dataset, fps=cfg.demos.fps, recording=recording_of(cfg),
                             robot_type=f"vla_structppo/{cfg.env.id}")
        print(f"wrote {len(ds)} expert steps as a LeRobot v3.0 dataset to {path}")
        return
    path = save_demos(ds, cfg.sft.dataset, cfg)
    print(f"wrote {len(ds)} expert steps to {path}")


def _sft(cfg: TrainConfig) -> None:
    # heavy imports only now that the config is known to be good
    from .train.sft import sft

    result = sft(cfg)
    from accelerate import PartialState

    if PartialState().is_main_process:
        final = result.final
        print(f"done: {result.run_dir}  token_accuracy={final.get('sft/final_token_accuracy', float('nan')):.4f}  "
              f"l1={final.get('sft/final_l1', float('nan')):.4f}  checkpoint={result.checkpoint}")


def _push(run_dir: str, args: list[str]) -> None:
    """``vla-structppo push RUN_DIR repo_id=org/name [private=..] [revision=..] [checkpoint=..]``."""
    from .hub import PUSH_USAGE, parse_push_args, push_run

    if any(a in ("-h", "--help") for a in [run_dir, *args]):
        print(PUSH_USAGE)
        return
    kw = parse_push_args(args)
    url = push_run(run_dir, kw.pop("repo_id"), **kw)
    print(f"pushed {run_dir} -> {url}")


if __name__ == "__main__":
    main()

"""``pml-hyper`` command line: ``train``, ``evaluate``, ``demo`` and ``visualize`` (also ``python -m
pml_hyper.cli``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from .training.config import ConfigError


def _train(args: argparse.Namespace) -> int:
    from .training.config import dump_config, load_config

    _check_config_file(args.config)
    if args.allow_config_change and not args.resume:
        raise ConfigError("--allow-config-change applies with --resume only")
    config = load_config(args.config, args.set)
    if args.print_config:
        print(dump_config(config), end="")
        return 0
    from .training.runner import Runner

    runner = Runner(
        config,
        data_root=args.data_root,
        resume=args.resume,
        allow_config_change=args.allow_config_change,
    )
    results = runner.run()
    if results:
        best = results["best"]
        print(f"{config['name']}: finished; best {best['metrics'] if best else 'n/a'}")
    return 0


def _check_config_file(path: str) -> None:
    """A config file that is empty (or only comments) is an error, not "all defaults"."""
    import yaml

    from .training.config import ConfigError

    file = Path(path)
    if not file.is_file():
        return  # load_config names the missing file
    text = file.read_text(encoding="utf-8")
    if yaml.safe_load(text) is None:
        raise ConfigError(f"config file {path} is empty: it must set at least data and model")


def _add_resume_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--allow-config-change",
        nargs="+",
        default=[],
        metavar="KEY",
        help="with --resume: accept these config keys differing from the checkpoint's "
        "(recorded in results.json)",
    )


def _evaluate(args: argparse.Namespace) -> int:
    from .training.evaluate import evaluate_checkpoint

    metrics = evaluate_checkpoint(args.checkpoint, data_root=args.data_root, overrides=args.set)
    for name, value in metrics.items():
        print(f"{name}: {100 * value:.2f}")
    return 0


def _check_data(args: argparse.Namespace) -> int:
    from .training.check_data import check_data
    from .training.config import load_config

    _check_config_file(args.config)
    bad = check_data(load_config(args.config, args.set), data_root=args.data_root)
    total = sum(len(errors) for errors in bad.values())
    for split, errors in bad.items():
        print(f"{split}: {len(errors)} bad image(s)")
        for error in errors:
            print(f"  {error}")
    if not bad:
        print("no image files to check (synthetic data)")
    print(f"{total} bad image(s) in total")
    return 1 if total else 0


def _add_check_data_parser(commands) -> None:
    check = commands.add_parser(
        "check-data", help="open every image of a config's datasets once and list bad files"
    )
    check.add_argument("config", help="YAML config file")
    check.add_argument("--data-root", help="dataset folder (overrides data.root)")
    check.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    check.set_defaults(func=_check_data)


def _demo(args: argparse.Namespace) -> int:
    from .training.demo import run_demo

    run_demo(
        output_dir=args.output_dir,
        epochs=args.epochs,
        max_classes="recipe" if args.max_classes is None else args.max_classes,
        image_size=args.image_size,
        recipes=args.recipes,
        seeds=args.seeds,
    )
    return 0


def _visualize(args: argparse.Namespace) -> int:
    import torch

    from .visualization import poincare_disk

    if (args.checkpoint is None) == (args.embeddings is None):
        raise ValueError("give a CHECKPOINT (file or run folder) or --embeddings FILE, not both")
    if args.checkpoint is not None:
        from .training.hierarchy_report import visualize_checkpoint

        if args.proxies:
            raise ValueError("--proxies applies with --embeddings; a checkpoint has its own")
        out = visualize_checkpoint(
            args.checkpoint, args.out, args.split, args.level, data_root=args.data_root
        )
        print(f"wrote {out}")
        return 0
    if args.split is not None:
        raise ValueError("--split applies with a CHECKPOINT")
    level = "0" if args.level is None else args.level
    if not level.isdigit():
        raise ValueError(f"--level with --embeddings is a label column number, got {level!r}")
    level = int(level)
    loaded = torch.load(args.embeddings, map_location="cpu", weights_only=True)
    if isinstance(loaded, (tuple, list)) and len(loaded) == 2:
        embeddings, labels = loaded
    elif isinstance(loaded, torch.Tensor):
        embeddings, labels = loaded, None
    else:
        raise ValueError(
            f"{args.embeddings} must hold an (embeddings, labels) tuple or a tensor (torch.save)"
        )
    labels = None if labels is None else torch.as_tensor(labels)
    if labels is not None and labels.dim() == 2:
        labels = labels[:, level]
    proxies = None
    if args.proxies:
        proxies = torch.load(args.proxies, map_location="cpu", weights_only=True)
        if not isinstance(proxies, torch.Tensor):
            raise ValueError(f"{args.proxies} must hold a (P, D) tensor (torch.save)")
    figure = poincare_disk(embeddings, labels, proxies=proxies, c=args.c)
    figure.savefig(args.out, dpi=150)
    print(f"wrote {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pml-hyper", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a YAML recipe (benchmarks/paper/*.yaml)")
    train.add_argument("config", help="YAML config file")
    train.add_argument("--data-root", help="dataset folder (overrides data.root)")
    train.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set schedule.epochs=5 (repeatable)",
    )
    train.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    train.add_argument(
        "--print-config",
        action="store_true",
        help="print the resolved recipe (its defaults: bases merged, --set applied, schema "
        "defaults filled in) as YAML and exit without training",
    )
    _add_resume_arguments(train)
    train.set_defaults(func=_train)

    evaluate = commands.add_parser("evaluate", help="Recall@K of a checkpoint (last.pt, best.pt)")
    evaluate.add_argument("checkpoint", help="a checkpoint file, or a run folder (its best.pt)")
    evaluate.add_argument(
        "--data-root", help="dataset folder (overrides data.root; not needed for synthetic, emoji)"
    )
    evaluate.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    evaluate.set_defaults(func=_evaluate)

    _add_check_data_parser(commands)

    demo = commands.add_parser(
        "demo", help="offline demo: emoji retrieval with EfficientNet-Lite0, five recipes"
    )
    demo.add_argument("--output-dir", default="runs/demo")
    demo.add_argument("--epochs", type=int, default=None, help="default: the recipes' (10)")
    demo.add_argument(
        "--max-classes", type=int, default=None, help="classes per split (default: 200)"
    )
    demo.add_argument("--image-size", type=int, default=None, help="default: the recipes' (96)")
    demo.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1; mean ± std (default 1)")
    demo.add_argument(
        "--recipes",
        nargs="+",
        default=None,
        help="subset of: PA, PA+HIER, HIST, Hyp, Hyp+HIER (default all)",
    )
    demo.set_defaults(func=_demo)

    visualize = commands.add_parser(
        "visualize", help="draw Poincaré-ball embeddings (and proxies) on the Poincaré disk"
    )
    visualize.add_argument(
        "checkpoint",
        nargs="?",
        help="run checkpoint (or run folder: its best.pt) whose model embeds --split",
    )
    visualize.add_argument("--embeddings", help="torch.save'd (embeddings, labels) tuple or tensor")
    visualize.add_argument(
        "--split", help="with CHECKPOINT: evaluation split to embed (default: the query split)"
    )
    visualize.add_argument("--data-root", help="with CHECKPOINT: dataset folder")
    visualize.add_argument("--proxies", help="torch.save'd (P, D) proxies tensor")
    visualize.add_argument(
        "--c", type=float, default=0.1, help="with --embeddings: curvature -c of the ball"
    )
    visualize.add_argument(
        "--level",
        help="colour by this level: a hierarchy level name with CHECKPOINT (default: "
        "eval.purity_level), a column of (N, L) labels with --embeddings (default 0 = finest)",
    )
    visualize.add_argument("--out", required=True, help="output PNG")
    visualize.set_defaults(func=_visualize)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, FileNotFoundError, ImportError, ValueError) as error:
        print(f"pml-hyper {args.command}: error: {error}", file=sys.stderr)
        return 2
    except RuntimeError as error:
        print(f"pml-hyper {args.command}: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

"""The `flan-jax` command line: one subcommand per job (convert, show, export; train next)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from flan_jax.model.convert import CheckpointError

_RULE = "-" * 72


def _convert(args: argparse.Namespace) -> int:
    import jax
    import numpy as np

    from flan_jax.model.convert import save_hf_checkpoint
    from flan_jax.model.io import is_flan_jax_dir, load_pretrained, save_pretrained

    to = args.to or ("hf" if is_flan_jax_dir(args.src) else "flan-jax")
    # Both loaders cast the parameters to the config's param_dtype.
    overrides = {"param_dtype": args.dtype} if args.dtype else {}
    cfg, params = load_pretrained(args.src, **overrides)
    n = sum(int(np.size(x)) for x in jax.tree.leaves(params))
    save = save_hf_checkpoint if to == "hf" else save_pretrained
    save(args.dst, cfg, params, overwrite=args.overwrite)
    print(f"wrote {to} model ({n:,} parameters, {cfg.feed_forward}, "
          f"{cfg.num_encoder_layers}+{cfg.num_decoder_layers} layers) to {args.dst}")
    return 0


def _show(args: argparse.Namespace) -> int:
    import itertools

    from flan_jax.data import export

    export.import_modules(args.module or export.DEFAULT_MODULES)
    rows = export.rows(args.name, args.split, seed=args.seed, shuffle=args.seed is not None)
    for i, row in enumerate(itertools.islice(rows, args.n), start=1):
        where = f"{row['task']}:{row['format']}" if "format" in row else row["task"]
        tid = f" | template {row['template_id']}" if "template_id" in row else ""
        print(f"{_RULE}\n[{i}/{args.n}] {where}{tid}\n{_RULE}")
        print(f"INPUTS:\n{row['inputs']}\n\nTARGETS:\n{row['targets']}\n")
    return 0


def _print_stats(name: str, observed=None, total: int = 0) -> None:
    from flan_jax.data import export

    table = export.shares(name)
    width = max(len(t) for t, _ in table)
    head = f"{'task':<{width}}  {'rate share':>10}"
    if observed is not None:
        head += f"  {'exported':>9}  {'share':>7}"
    print(head)
    for task, share in table:
        line = f"{task:<{width}}  {share:>10.2%}"
        if observed is not None:
            n = observed.get(task, 0)
            line += f"  {n:>9,}  {n / max(total, 1):>7.2%}"
        print(line)
    print(f"{len(table)} tasks")


def _export(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from flan_jax.data import export

    export.import_modules(args.module or export.DEFAULT_MODULES)
    if args.out is None:
        if not args.stats:
            raise export.ExportError("give --out FILE.jsonl (or --stats alone for the shares)")
        _print_stats(args.name)
        return 0
    with tqdm(total=args.n, unit="ex", file=sys.stderr, disable=args.quiet,
              desc=f"export {args.name}") as bar:
        result = export.export_jsonl(args.name, args.out, n=args.n, split=args.split,
                                     seed=args.seed, overwrite=args.overwrite,
                                     progress=lambda _: bar.update())
    print(f"wrote {result.count:,} examples of {args.name} ({args.split}) to {result.path}")
    if args.stats:
        _print_stats(args.name, result.per_task, result.count)
    return 0


def _add_task_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", metavar="MIXTURE_OR_TASK",
                   help="a registered seqio mixture or task, e.g. flan_jax_default or "
                        "synth_arithmetic:cot_fs")
    p.add_argument("--split", default="train", help="split to read (default: %(default)s)")
    p.add_argument("--module", action="append", default=None, metavar="MODULE",
                   help="import this module (or every module of this package) to register "
                        "tasks; repeatable (default: the mixtures package)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flan-jax",
        description="Flan-style instruction tuning of T5 in JAX. Run `flan-jax COMMAND --help`.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    convert = sub.add_parser(
        "convert", help="convert between Hugging Face T5 and flan-jax model directories",
        description=(
            "Convert a Hugging Face T5 / Flan-T5 / t5-v1_1 directory (config.json + "
            "model.safetensors or a sharded index) into a flan-jax directory (config.json + "
            "orbax params/), or back. The direction follows SRC unless --to is given. The "
            "output is written to a temporary directory and renamed into place, so an "
            "existing DST is never left half-written."))
    convert.add_argument("src", help="Hugging Face or flan-jax model directory to read")
    convert.add_argument("dst", help="directory to write (must be absent or empty unless "
                         "--overwrite)")
    convert.add_argument("--to", choices=("hf", "flan-jax"),
                         help="output format (default: the other format than SRC's)")
    convert.add_argument("--dtype", choices=("float32", "bfloat16"),
                         help="cast parameters to this dtype (default: keep float32)")
    convert.add_argument("--overwrite", action="store_true",
                         help="replace DST if it exists (atomically, after a successful write)")
    convert.set_defaults(func=_convert)

    show = sub.add_parser(
        "show", help="print rendered examples of a mixture or task",
        description=("Print examples as the model sees them (inputs and targets text, before "
                     "tokenization), each with its task, format and template id."))
    _add_task_args(show)
    show.add_argument("--n", type=int, default=5, help="examples to print (default: %(default)s)")
    show.add_argument("--seed", type=int, default=None,
                      help="shuffle with this seed (default: the split's own order; mixtures "
                           "are always sampled by rate)")
    show.set_defaults(func=_show)

    exp = sub.add_parser(
        "export", help="stream a mixture or task to JSONL",
        description=(
            "Write rendered examples as JSON lines {inputs, targets, task, format, "
            "template_id}, one example in memory at a time. The file appears only when "
            "complete: an interrupted or killed export leaves no partial file."))
    _add_task_args(exp)
    exp.add_argument("--out", type=Path, help="JSONL file to write")
    exp.add_argument("--n", type=int, default=None,
                     help="examples to write (required for a mixture; default for a task: "
                          "its whole split)")
    exp.add_argument("--seed", type=int, default=0,
                     help="sampling and shuffling seed (default: %(default)s)")
    exp.add_argument("--stats", action="store_true",
                     help="print each task's share of the mixture (and of the export)")
    exp.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    exp.add_argument("--quiet", action="store_true", help="no progress bar")
    exp.set_defaults(func=_export)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in ("show", "export"):
        from flan_jax.quiet import import_tensorflow
        import_tensorflow()
    from flan_jax.data.export import ExportError
    from flan_jax.data.sources import SourceError
    from flan_jax.data.templates import TemplateError
    from flan_jax.data.vocab import VocabularyError

    try:
        return args.func(args)
    except (CheckpointError, FileExistsError, ExportError, SourceError, TemplateError,
            VocabularyError) as e:
        print(f"flan-jax {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"flan-jax {args.command}: interrupted; files it was writing were not created "
              "(existing ones are unchanged)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

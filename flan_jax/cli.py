"""The `flan-jax` command line: one subcommand per job (convert, show, export, prepare, train,
eval, infer, plan, study); the jobs themselves live in their modules."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from flan_jax import distributed
from flan_jax.errors import CheckpointError

_RULE = "-" * 72


def _convert(args: argparse.Namespace) -> int:
    from flan_jax.model.convert_dir import convert_dir

    print(convert_dir(args.src, args.dst, to=args.to, merge=args.merge, base=args.base,
                      base_name=args.base_name, dtype=args.dtype, overwrite=args.overwrite,
                      add_tokens=args.add_tokens, vocab_pieces=args.vocab_pieces,
                      sentinels=args.sentinels))
    return 0


def _study(args: argparse.Namespace) -> int:
    from flan_jax.study.runner import Study, run_study

    study = Study()
    results = run_study(study, limit=args.limit,
                        log=lambda line: print(line, file=sys.stderr, flush=True))
    print(Path(study.output_dir, "results.md").read_text())
    return 0 if results["complete"] or args.limit is not None else 1


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
        if args.tokens:
            for feature in ("inputs", "targets"):
                pieces = export.token_pieces(where, feature, row[feature])
                print(f"{feature.upper()} ({len(pieces)} tokens):\n{' '.join(pieces)}\n")
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


def _prepare(args: argparse.Namespace) -> int:
    from flan_jax.data import prepare

    out = args.out or prepare.default_prepared_dir(args.flan2022)
    before = prepare.load_prepared(out, args.flan2022)
    result = before or prepare.prepare_flan2022(args.flan2022, out, progress=not args.quiet)
    keys = sum(len(result.counts(p)) for p in result.sources())
    state = "up to date, nothing to do" if before else "wrote"
    print(f"{state}: {result.num_rows:,} rows of {len(result.sources())} file(s), {keys:,} "
          f"(task_name, template_type) groups, in {out}")
    return 0


def _gin_help(p: argparse.ArgumentParser) -> None:
    p.add_argument("--gin_file", action="append", default=[], metavar="FILE",
                   help="gin config (a path, or a name under the package's gin/, e.g. "
                        "runs/demo.gin); repeatable, later files override earlier ones")
    p.add_argument("--gin.NAME=VALUE", dest="_gin_doc", metavar="", default=None,
                   help="override one binding, e.g. --gin.train.total_steps=2000 or "
                        "--gin.train.model_dir=\"'/tmp/run'\" (gin syntax: strings quoted)")


def _train(args: argparse.Namespace) -> int:
    from flan_jax.train import printout
    from flan_jax.train.loop import train

    result = train()
    status = "stopped early (SIGTERM), resume by rerunning" if result.stopped_early else "done"
    print(f"{status}: step {result.step}, model dir {result.model_dir}")
    steps = sorted(result.evals)
    if steps:
        first, last = steps[0], steps[-1]
        title = f"accuracy (%), step {first} -> step {last}" if first != last else \
            f"accuracy (%) at step {last}"
        print(f"\n{title}")
        print(printout.eval_table(result.evals[last],
                                  result.evals[first] if first != last else None))
    if args.generations and (result.model_dir / "model").exists():
        printout.print_generations(result.model_dir, args.generations)
    return 0


def _eval(args: argparse.Namespace) -> int:
    from flan_jax.train import evaluate, infer, printout

    model, _ = infer.load(args.checkpoint)
    trained = evaluate.trained_data(args.checkpoint, model.cfg.architecture)
    # Prompted and scored with the features it trained on (a prefix LM's prompt bidirectional).
    results = evaluate.Evaluator(evaluate.EvalConfig(), trained.mixture_or_task_name,
                                 trained.module_imports, trained.feature_converter)(model)
    print(printout.eval_table(results))
    if args.output:
        evaluate.write_json(results, args.output)
        print(f"wrote {args.output}")
    return 0


def _infer(args: argparse.Namespace) -> int:
    from flan_jax.train import evaluate, infer

    if (args.input is None) == (args.input_file is None):
        raise ValueError("give --input TEXT (repeatable) or --input_file FILE.jsonl")
    if args.input_file is not None and args.output is None:
        raise ValueError("--input_file needs --output FILE.jsonl")
    model, vocabulary = infer.load(args.checkpoint, vocab=args.vocab)
    trained = evaluate.trained_data(args.checkpoint, model.cfg.architecture)
    options = {**decode_config(args).generate_kwargs(), "prefix": trained.prefix_lm}
    if args.input is not None:
        for text, out in zip(args.input, infer.generate(model, vocabulary, args.input,
                                                        **options)):
            print(f"> {text}\n{out}\n")
        return 0
    rows = list(infer.read_inputs(args.input_file, args.field))
    outputs = infer.generate(model, vocabulary, [r[args.field] for r in rows], **options)
    n = infer.write_outputs(({**r, "output": o} for r, o in zip(rows, outputs)), args.output)
    print(f"wrote {n} outputs to {args.output}")
    return 0


def _plan(args: argparse.Namespace) -> int:
    import json

    from flan_jax import plan as plan_lib
    from flan_jax.train.setup import bound, setup_run

    # The run as `flan-jax train` would build it (a finetune: the checkpoint's architecture).
    run = setup_run(bound("train.init_from", None), import_modules=False)
    result = plan_lib.plan(
        run.model_cfg, run.mesh, run.rules, run.optimizer, run.optimizer_name,
        devices=args.devices, num_slices=args.slices, batch_size=run.data.batch_size,
        input_len=run.data.task_feature_lengths["inputs"],
        target_len=run.data.task_feature_lengths["targets"],
        microbatches=bound("train.microbatches", 1), model=run.abstract_model,
        lora=run.lora if run.lora.enabled else None,
        prompt=run.prompt if run.prompt.enabled else None)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(plan_lib.format_plan(result, run.model_cfg, args.device_memory))
    return 0


def _add_task_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", metavar="MIXTURE_OR_TASK",
                   help="a registered seqio mixture or task, e.g. flan_jax_default or "
                        "synth_arithmetic:cot_fs")
    p.add_argument("--split", default="train", help="split to read (default: %(default)s)")
    p.add_argument("--module", action="append", default=None, metavar="MODULE",
                   help="import this module (or every module of this package) to register "
                        "tasks; repeatable (default: the mixtures package)")


_DECODE_HELP = {
    "method": "greedy, sample or beam", "max_input_len": "prompt tokens kept (EOS included)",
    "max_decode_len": "most tokens generated",
    "batch_size": "prompts decoded together (one compilation)",
    "temperature": "sampling temperature", "top_k": "sample from the k likeliest; 0 = all",
    "top_p": "nucleus sampling mass; 1 = off", "seed": "sampling seed", "beam_size": "beams",
    "length_penalty": "beam search length penalty alpha"}


def decode_config(args: argparse.Namespace):
    """gin's DecodeConfig with the decoding flags that were given applied on top."""
    import dataclasses

    from flan_jax.train.infer import DecodeConfig

    flags = {f.name: getattr(args, f.name) for f in dataclasses.fields(DecodeConfig)
             if getattr(args, f.name) is not None}
    return dataclasses.replace(DecodeConfig(), **flags)


def _decode_flags(p: argparse.ArgumentParser) -> None:
    """One flag per DecodeConfig field; a flag given overrides the gin value of its name."""
    import dataclasses

    from flan_jax.train.infer import METHODS, DecodeConfig

    for f in dataclasses.fields(DecodeConfig):
        p.add_argument(f"--{f.name}", type=type(f.default), default=None,
                       choices=METHODS if f.name == "method" else None,
                       help=f"{_DECODE_HELP[f.name]} (default: gin DecodeConfig.{f.name}, "
                            f"else {f.default})")


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
            "orbax params/), or back. LoRA adapters (a LoRA run's model_dir/adapters, or a "
            "Hugging Face PEFT dir: adapter_config.json + adapter_model.safetensors) convert "
            "between the two layouts, or with --merge fold into their base model and write a "
            "plain model dir. The direction follows SRC unless --to is given. The "
            "output is written to a temporary directory and renamed into place, so an "
            "existing DST is never left half-written."))
    convert.add_argument("src", help="Hugging Face or flan-jax model directory to read")
    convert.add_argument("dst", help="directory to write (must be absent or empty unless "
                         "--overwrite)")
    convert.add_argument("--to", choices=("hf", "flan-jax", "peft", "adapters"),
                         help="output format: hf / flan-jax for a model (and --merge), peft "
                         "/ adapters (flan-jax's) for adapters (default: the other format "
                         "than SRC's; with --merge, the base's)")
    convert.add_argument("--merge", action="store_true",
                         help="SRC is adapters: write the base with them merged in "
                         "(W + alpha / r * A @ B), a plain model dir")
    convert.add_argument("--base", help="SRC is adapters: the model dir (HF or flan-jax) they "
                         "were trained on (default: the one they record)")
    convert.add_argument("--base_name", help="--to peft: the base_model_name_or_path to "
                         "record, e.g. google/flan-t5-base (default: --base)")
    convert.add_argument("--dtype", choices=("float32", "bfloat16"),
                         help="cast parameters to this dtype (default: keep float32)")
    convert.add_argument("--overwrite", action="store_true",
                         help="replace DST if it exists (atomically, after a successful write)")
    convert.add_argument("--add_tokens", metavar="galactica|TOK,TOK",
                         help="add tokens to the model's vocabulary before its sentinels: "
                         "'galactica' (its 10 markers, for gin/vocab/t5_galactica.gin) or a "
                         "comma-separated list; the embedding rows are remapped (new rows "
                         "start at the mean piece row) and SRC's spiece.model is written "
                         "with them to DST")
    convert.add_argument("--vocab_pieces", type=int,
                         help="--add_tokens: SentencePiece pieces of the model's vocabulary, "
                         "before its sentinels (default: counted from SRC's spiece.model)")
    convert.add_argument("--sentinels", type=int, default=100,
                         help="--add_tokens: the vocabulary's sentinels (default %(default)s)")
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
    show.add_argument("--tokens", action="store_true",
                      help="also print each text as the pieces its vocabulary tokenizes it "
                           "into (e.g. a Galactica DNA span one piece per character)")
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

    prep = sub.add_parser(
        "prepare", help="convert Flan 2022 parquet files for reading rows by index",
        description=(
            "Convert published Flan 2022 parquet files (columns inputs, targets, task_name, "
            "template_type) once into ArrayRecord files with rows grouped by (task_name, "
            "template_type) and an index.json, so the training reader can read any row by "
            "index (parquet reads a whole row group per row). The result appears only when "
            "complete (a killed run leaves none); a result for the same files (paths, sizes, "
            "mtimes) is reused. flan2022.register_flan2022_submix(prepared_dir=DIR) reads it; "
            "without --out it goes where registration looks by default "
            "($FLAN_JAX_CACHE or ~/.cache/flan_jax, under prepared/). JSONL files need no "
            "preparing."))
    prep.add_argument("--flan2022", nargs="+", required=True, type=Path, metavar="FILE",
                      help="Flan 2022 .parquet files (e.g. every file of a submix)")
    prep.add_argument("--out", type=Path, metavar="DIR",
                      help="directory to write (absent, empty, or an earlier result; "
                           "default: the registration cache directory for these files)")
    prep.add_argument("--quiet", action="store_true", help="no progress bar")
    prep.set_defaults(func=_prepare)

    train = sub.add_parser(
        "train", help="train or finetune a model (gin-configured)",
        description=(
            "Train, or resume, the run that the gin files describe. Start with "
            "--gin_file=runs/demo.gin (tiny model, built-in mixture, minutes on a CPU); "
            "runs/finetune.gin finetunes a Hugging Face / flan-jax checkpoint "
            "(--gin.train.init_from=\"'DIR'\"); mesh/*.gin pick the parallelism. A mistyped "
            "binding or a missing required value stops before any work, naming it. Rerunning "
            "the same command resumes from the last checkpoint, exactly."))
    _gin_help(train)
    distributed.add_flags(train)
    train.add_argument("--generations", type=int, default=0, metavar="N",
                       help="after training, print N generations per prompt kind (zero-shot, "
                            "few-shot, CoT, held-out) from the built-in mixture")
    train.set_defaults(func=_train)

    ev = sub.add_parser(
        "eval", help="evaluate a checkpoint on the eval mixtures (gin EvalConfig)",
        description="Decode every eval task of each group (default: held-in and held-out "
                    "synthetic families) and print per-task accuracy. The model is prompted "
                    "with the features it trained on (DataConfig.feature_converter, as its "
                    "run recorded it; a prefix LM sees its prompt bidirectionally); "
                    "--gin.DataConfig.feature_converter=\"'...'\" overrides.")
    ev.add_argument("--checkpoint", required=True,
                    help="a training model_dir, a flan-jax model dir or a Hugging Face dir")
    ev.add_argument("--output", type=Path, help="also write the results as JSON here")
    _gin_help(ev)
    distributed.add_flags(ev)
    ev.set_defaults(func=_eval)

    inf = sub.add_parser(
        "infer", help="generate text from a checkpoint",
        description="Generate from a training model_dir, a flan-jax model dir or an "
                    "imported Hugging Face T5 dir (its spiece.model is used when present). A "
                    "model trained as a prefix LM sees its prompt bidirectionally, as its run "
                    "recorded (DataConfig.feature_converter); "
                    "--gin.DataConfig.feature_converter=\"'decoder'\" decodes it causally.")
    inf.add_argument("--checkpoint", required=True, help="model directory (see above)")
    inf.add_argument("--input", action="append", metavar="TEXT",
                     help="a prompt; repeatable")
    inf.add_argument("--input_file", type=Path, help="JSONL with one prompt per row")
    inf.add_argument("--field", default="inputs",
                     help="the prompt's field in --input_file rows (default: %(default)s)")
    inf.add_argument("--output", type=Path, help="JSONL to write (rows + 'output')")
    inf.add_argument("--vocab", help="SentencePiece model (default: the checkpoint's "
                                     "spiece.model, else the shipped vocabulary)")
    _decode_flags(inf)
    _gin_help(inf)
    distributed.add_flags(inf)
    inf.set_defaults(func=_infer)

    pl = sub.add_parser(
        "plan", help="estimate per-device memory for a model, mesh and batch (no allocation)",
        description=(
            "Print per-device bytes of params, optimizer state (Adafactor factored or AdamW), "
            "gradients and a rough activation estimate for the gin-configured model "
            "(models/*.gin), mesh (mesh/*.gin) and batch (DataConfig), sharded by the "
            "logical-axis rules on a mesh of --devices devices. Nothing is allocated, so it "
            "runs on a laptop for flan-t5-xxl on a v4-64."))
    pl.add_argument("--devices", type=int, required=True, metavar="N",
                    help="devices in the whole run (e.g. 32 for a v4-64: 32 chips)")
    pl.add_argument("--slices", type=int, default=1, metavar="S",
                    help="TPU slices or hosts the dcn_* mesh axes span (default: 1)")
    pl.add_argument("--device_memory", type=float, metavar="GIB",
                    help="memory per device, to say whether the plan fits (e.g. 32 for v4)")
    pl.add_argument("--json", action="store_true", help="print the numbers as JSON (bytes)")
    _gin_help(pl)
    pl.set_defaults(func=_plan)

    st = sub.add_parser(
        "study", help="train a grid of runs and tabulate, plot and fit their results",
        description=(
            "Train every run of the grid a study gin file describes (Study.axes: named sets "
            "of bindings; their product on top of Study.gin_files), each a real `flan-jax "
            "train` in OUTPUT_DIR/runs/<name>, then write results.json, results.md, "
            "params.png / tokens.png / compute.png and power-law fits of eval loss "
            "(L = a x^-b + c). Started again, it skips finished runs and resumes the "
            "interrupted one. Every run's gin is checked before the first trains."))
    st.add_argument("--limit", type=int, metavar="N",
                    help="train at most N unfinished runs this time (the table covers what "
                         "is finished)")
    _gin_help(st)
    st.set_defaults(func=_study)
    for command in sub.choices.values():
        command.add_argument("--verbose", action="store_true",
                             help="on an error, print its traceback too (or set "
                                  "FLAN_JAX_DEBUG=1); by default one line names what failed")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from flan_jax import gin_utils

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        argv, gin_files, gin_bindings = gin_utils.split_gin_args(argv)
    except gin_utils.GinConfigError as e:
        print(f"flan-jax: error: {e}", file=sys.stderr)
        return 2
    args = build_parser().parse_args(argv)
    if args.command in ("show", "export", "train", "eval", "infer", "plan", "study"):
        from absl import logging as absl_logging

        from flan_jax.quiet import import_tensorflow
        import_tensorflow()
        # seqio's INFO/WARNING chatter (sequence-length notes, mixing rates) is not for users.
        absl_logging.set_verbosity(absl_logging.ERROR)
    from flan_jax.data.export import ExportError
    from flan_jax.errors import FlanJaxError
    from flan_jax.data.templates import TemplateError
    from flan_jax.data.vocab import VocabularyError
    from flan_jax.train import infer  # noqa: F401  (registers DecodeConfig with gin)
    from flan_jax.train.loop import NonFiniteLossError
    from flan_jax.study import runner  # noqa: F401  (registers Study with gin)
    if args.command in ("train", "eval", "infer", "plan", "study"):
        try:  # (the imports above registered every configurable before gin locks)
            gin_utils.parse(gin_files, gin_bindings)
            # Before any backend use; after gin, so a typo fails without waiting for peers.
            if args.command not in ("plan", "study"):
                distributed.initialize(distributed.config_from(args))
        except (gin_utils.GinConfigError, distributed.DistributedError) as e:
            return _user_error(args, e)
    elif gin_files or gin_bindings:
        print(f"flan-jax {args.command}: error: takes no --gin_file / --gin.* flags",
              file=sys.stderr)
        return 2

    try:
        return args.func(args)
    except (CheckpointError, FileExistsError, FileNotFoundError, ExportError, FlanJaxError,
            TemplateError, VocabularyError, NonFiniteLossError,
            distributed.StepTimeoutError) as e:
        return _user_error(args, e)
    except (ValueError, RuntimeError) as e:
        if not _is_config_error(e):
            raise
        return _user_error(args, e)
    except KeyboardInterrupt:
        print(f"flan-jax {args.command}: interrupted; files it was writing were not created "
              "(existing ones are unchanged)", file=sys.stderr)
        return 130


def _user_error(args: argparse.Namespace, e: BaseException) -> int:
    """One line that names what failed (exit 2); the traceback with --verbose or
    FLAN_JAX_DEBUG=1."""
    import os
    if getattr(args, "verbose", False) or os.environ.get("FLAN_JAX_DEBUG") == "1":
        import traceback
        traceback.print_exception(e, file=sys.stderr)
    # (gin appends "In call to configurable 'train' (<function ...>)": noise to a user)
    message = str(e).split("\n  In call to configurable")[0]
    print(f"flan-jax {args.command}: error: {message}", file=sys.stderr)
    return 2


def _is_config_error(e: Exception) -> bool:
    """gin's missing-REQUIRED errors and our own named-setting errors are user errors."""
    text = str(e)
    return ("Required bindings" in text or "must have initial args" in text
            or any(f"{name}." in text for name in (
                "train", "DataConfig", "EvalConfig", "LossConfig", "MeshConfig",
                "make_optimizer", "learning_rate_schedule", "T5Config")) or "--input" in text)


if __name__ == "__main__":
    sys.exit(main())

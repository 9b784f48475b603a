"""The `flan-jax` command line: one subcommand per job (convert now; train/eval/infer next)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from flan_jax.model.convert import CheckpointError


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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (CheckpointError, FileExistsError) as e:
        print(f"flan-jax {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

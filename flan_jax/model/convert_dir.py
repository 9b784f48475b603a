"""`flan-jax convert`: any model or adapters dir to another layout, one function.

A model dir converts between flan-jax and Hugging Face, optionally with new tokens added to
its vocabulary (`--add_tokens galactica`: `vocab_resize.extend_vocab`); an adapters dir (a LoRA run's
`model_dir/adapters`, or a PEFT dir) converts between the two adapter layouts or merges
into its base (`peft_format.convert_adapters`).
"""

from __future__ import annotations

from pathlib import Path

from flan_jax.errors import ConfigError


def convert_dir(src: str, dst: str, *, to: str | None = None, merge: bool = False,
                base: str | None = None, base_name: str | None = None,
                dtype: str | None = None, overwrite: bool = False,
                add_tokens: str | None = None, vocab_pieces: int | None = None,
                sentinels: int = 100) -> str:
    """Writes `dst` from `src`; returns the line to print. `to`: hf | flan-jax | peft |
    adapters (default: the other model layout); `dtype`: the params' dtype on the way.

    `add_tokens`: "galactica" (its markers) or comma-separated tokens, placed after the
    model's `vocab_pieces` SentencePiece pieces (default: the count of SRC's spiece.model)
    and before its `sentinels`, as `vocab.with_special_tokens` places them; the embedding
    rows are remapped (`vocab_resize.extend_vocab`) and, where SRC has a spiece.model, DST
    gets it with the tokens added, which `flan-jax infer` then uses (with Galactica's
    character splitting when the markers are Galactica's).
    """
    import jax
    import numpy as np

    from flan_jax.atomic import check_destination
    from flan_jax.model.convert import save_hf_checkpoint
    from flan_jax.model.io import is_flan_jax_dir, load_pretrained, save_pretrained
    from flan_jax.model.peft_format import (ADAPTER_FORMATS, convert_adapters,
                                            is_adapters_dir, is_peft_dir)

    check_destination(dst, overwrite=overwrite)  # before reading the model
    tokens = _tokens(add_tokens)
    # Both loaders cast the parameters to the config's param_dtype.
    overrides = {"param_dtype": dtype} if dtype else {}
    if is_peft_dir(src) or is_adapters_dir(src):
        return convert_adapters(src, dst, base=base, to=to, merge=merge, base_name=base_name,
                                overwrite=overwrite, **overrides)
    if merge or base or to in ADAPTER_FORMATS:
        raise ConfigError(f"{src} is a model dir; --merge, --base and --to peft/adapters "
                          "take an adapters dir as SRC (e.g. a LoRA run's model_dir/adapters)")
    to = to or ("hf" if is_flan_jax_dir(src) else "flan-jax")
    spiece = Path(src) / "spiece.model"
    if tokens:
        if to != "flan-jax":
            raise ConfigError("--add_tokens writes a flan-jax model dir (--to flan-jax): "
                              "finetune it, then convert the result to hf")
        if vocab_pieces is None:
            if not spiece.is_file():
                raise ConfigError(f"--add_tokens: {src} has no spiece.model to count its "
                                  "pieces; give --vocab_pieces (32000 for T5 / Flan-T5)")
            vocab_pieces = _piece_count(spiece)
    cfg, params = load_pretrained(src, **overrides)
    if tokens:
        from flan_jax.model.vocab_resize import extend_vocab

        params, cfg = extend_vocab(params, cfg, vocab_pieces, tokens, sentinels)
    n = sum(int(np.size(x)) for x in jax.tree.leaves(params))
    if to == "hf":
        save_hf_checkpoint(dst, cfg, params, overwrite=overwrite)
    else:  # what the model trained on travels with it (a prefix LM stays one)
        from flan_jax.train.evaluate import TRAINED_ON
        record = Path(src) / TRAINED_ON
        copies = {TRAINED_ON: record} if record.is_file() else {}
        if tokens and spiece.is_file():
            from flan_jax.data.vocab import with_special_tokens
            copies["spiece.model"] = Path(with_special_tokens(str(spiece), tokens))

        def copy_files(tmp: Path) -> None:
            for name, path in copies.items():
                (tmp / name).write_bytes(path.read_bytes())

        save_pretrained(dst, cfg, params, overwrite=overwrite,
                        extra=copy_files if copies else None)
    added = (f", {len(tokens)} tokens added after {vocab_pieces} pieces (vocab_size "
             f"{cfg.vocab_size})" if tokens else "")
    return (f"wrote {to} model ({n:,} parameters, {cfg.feed_forward}, "
            f"{cfg.num_encoder_layers}+{cfg.num_decoder_layers} layers{added}) to {dst}")


def _tokens(add_tokens: str | None) -> tuple[str, ...]:
    if not add_tokens:
        return ()
    if add_tokens == "galactica":
        from flan_jax.data.galactica import TOKENS
        return TOKENS
    tokens = tuple(t.strip() for t in add_tokens.split(","))
    if not all(tokens) or any(" " in t for t in tokens):
        raise ConfigError(f"--add_tokens {add_tokens!r}: 'galactica' or comma-separated "
                          "tokens without spaces")
    return tokens


def _piece_count(spiece: Path) -> int:
    import sentencepiece

    return sentencepiece.SentencePieceProcessor(model_file=str(spiece)).get_piece_size()

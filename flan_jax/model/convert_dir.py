"""`flan-jax convert`: any model or adapters dir to another layout, one function.

A model dir converts between flan-jax and Hugging Face; an adapters dir (a LoRA run's
`model_dir/adapters`, or a PEFT dir) converts between the two adapter layouts or merges
into its base (`peft_format.convert_adapters`).
"""

from __future__ import annotations

from pathlib import Path

from flan_jax.errors import ConfigError


def convert_dir(src: str, dst: str, *, to: str | None = None, merge: bool = False,
                base: str | None = None, base_name: str | None = None,
                dtype: str | None = None, overwrite: bool = False) -> str:
    """Writes `dst` from `src`; returns the line to print. `to`: hf | flan-jax | peft |
    adapters (default: the other model layout); `dtype`: the params' dtype on the way."""
    import jax
    import numpy as np

    from flan_jax.atomic import check_destination
    from flan_jax.model.convert import save_hf_checkpoint
    from flan_jax.model.io import is_flan_jax_dir, load_pretrained, save_pretrained
    from flan_jax.model.peft_format import (ADAPTER_FORMATS, convert_adapters,
                                            is_adapters_dir, is_peft_dir)

    check_destination(dst, overwrite=overwrite)  # before reading the model
    # Both loaders cast the parameters to the config's param_dtype.
    overrides = {"param_dtype": dtype} if dtype else {}
    if is_peft_dir(src) or is_adapters_dir(src):
        return convert_adapters(src, dst, base=base, to=to, merge=merge, base_name=base_name,
                                overwrite=overwrite, **overrides)
    if merge or base or to in ADAPTER_FORMATS:
        raise ConfigError(f"{src} is a model dir; --merge, --base and --to peft/adapters "
                          "take an adapters dir as SRC (e.g. a LoRA run's model_dir/adapters)")
    to = to or ("hf" if is_flan_jax_dir(src) else "flan-jax")
    cfg, params = load_pretrained(src, **overrides)
    n = sum(int(np.size(x)) for x in jax.tree.leaves(params))
    if to == "hf":
        save_hf_checkpoint(dst, cfg, params, overwrite=overwrite)
    else:  # what the model trained on travels with it (a prefix LM stays one)
        from flan_jax.train.evaluate import TRAINED_ON
        record = Path(src) / TRAINED_ON
        keep = record if record.is_file() else None

        def copy_record(tmp: Path) -> None:
            (tmp / TRAINED_ON).write_bytes(keep.read_bytes())

        save_pretrained(dst, cfg, params, overwrite=overwrite,
                        extra=copy_record if keep else None)
    return (f"wrote {to} model ({n:,} parameters, {cfg.feed_forward}, "
            f"{cfg.num_encoder_layers}+{cfg.num_decoder_layers} layers) to {dst}")

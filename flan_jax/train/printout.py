"""What `flan-jax train` and `eval` print: the per-task accuracy table and a few sample
generations per prompt kind."""

from __future__ import annotations

from pathlib import Path

from flan_jax.train.evaluate import Results, summary

RULE = "-" * 72


def print_generations(model_dir: Path, n: int) -> None:
    """A few validation prompts per kind (zero-shot, few-shot, CoT, held-out) and outputs."""
    import itertools

    from flan_jax.data import export
    from flan_jax.train import evaluate, infer

    model, vocabulary = infer.load(model_dir)
    trained = evaluate.trained_data(model_dir, model.cfg.architecture)
    kinds = sample_kinds(trained.mixture_or_task_name)
    print("\nsample generations (validation split)")
    for kind, task in kinds:
        try:
            rows = list(itertools.islice(export.rows(task, "validation", shuffle=False), n))
        except export.ExportError:
            continue
        outputs = infer.generate(model, vocabulary, [r["inputs"] for r in rows],
                                 max_decode_len=64, batch_size=max(len(rows), 1),
                                 prefix=trained.prefix_lm)
        for row, out in zip(rows, outputs):
            print(f"{RULE}\n[{kind}] {task}\n{row['inputs']}\n  target: {row['targets']}"
                  f"\n  model:  {out}")


DEFAULT_KINDS = (("zero-shot", "synth_word_problem:zs_noopt"),
                 ("few-shot", "synth_sorting:fs_noopt"),
                 ("chain of thought", "synth_arithmetic:cot_zs"),
                 ("held-out, zero-shot", "synth_weekday:zs_opt"))
_KIND_FORMATS = (("zero-shot", ("zs_noopt", "zs_opt")), ("few-shot", ("fs_noopt", "fs_opt")),
                 ("chain of thought", ("cot_work", "cot_zs")))


def sample_kinds(mixture: str) -> list[tuple[str, str]]:
    """(kind, task) pairs to sample: the default mixture's four when the run trained on
    those tasks, else per kind the first task of the run's own mixture in that kind's
    formats (a science run shows its DNA and `<work>` prompts, not the default's)."""
    from flan_jax.data import export
    from flan_jax.data.mixing import split_task_name

    try:
        names = sorted(task for task, _ in export.shares(mixture))
    except export.ExportError:  # (not registered here)
        return list(DEFAULT_KINDS)
    bases = {n.rpartition(":")[0] for n in names}
    if all(task.rpartition(":")[0] in bases for _, task in DEFAULT_KINDS[:3]):
        return list(DEFAULT_KINDS)
    formats = {}
    for name in names:
        try:
            formats.setdefault(split_task_name(name)[1], name)
        except ValueError:  # (not a Flan format task: no kind)
            continue
    kinds = []
    for kind, fmts in _KIND_FORMATS:
        task = next((formats[f] for f in fmts if f in formats), None)
        if task is not None:
            kinds.append((kind, task))
    return kinds


def eval_table(results: Results, baseline: Results | None = None) -> str:
    """Per-task accuracy per group (and rank classification), `baseline -> now` when given,
    with each group's mean: what `flan-jax train` and `eval` print."""
    lines = []
    for group, tasks in results.items():
        lines.append(f"[{group}]")
        width = max(len(t) for t in [*tasks, "mean accuracy"])
        for task in sorted(tasks):
            acc = tasks[task].get("accuracy")
            was = baseline.get(group, {}).get(task, {}).get("accuracy") if baseline else None
            cell = f"{acc:6.1f}" if acc is not None else "     -"
            if was is not None:
                cell = f"{was:6.1f} -> {cell}"
            rank = tasks[task].get("rank_accuracy")
            was_rank = (baseline.get(group, {}).get(task, {}).get("rank_accuracy")
                        if baseline else None)
            if rank is not None:
                before = f"{was_rank:5.1f} -> " if was_rank is not None else ""
                cell += f"   (rank classification {before}{rank:5.1f})"
            lines.append(f"  {task:<{width}}  {cell}")
        mean = summary({group: tasks}).get(f"eval/{group}/accuracy")
        if mean is not None:
            was = summary({group: baseline[group]}).get(f"eval/{group}/accuracy") \
                if baseline and group in baseline else None
            cell = f"{mean:6.1f}" if was is None else f"{was:6.1f} -> {mean:6.1f}"
            lines.append(f"  {'mean accuracy':<{width}}  {cell}")
    return "\n".join(lines)

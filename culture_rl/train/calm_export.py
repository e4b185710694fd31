"""CALM export: :func:`export_calm` writes ``<run>/calm/export/`` at the end of the worker loop
(``adapter/`` or ``model/``, ``tokenizer/``, ``calm.safetensors``, ``calm.json``,
``check.safetensors``, ``eval.json`` and the finished marker);
:func:`culture_rl.models.calm_policy.load_calm_export` rebuilds the CALM model from it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from culture_rl.train.calm_data import CalmRows
from culture_rl.core.checkpoints import publish_export
from culture_rl.models.calm import calm_state_dict
from culture_rl.train.callbacks import worker_log

if TYPE_CHECKING:
    from culture_rl.train.calm import CalmJob


def export_calm(job: CalmJob, engine, strategy, tokenizer, scores: dict, step: int, rank: int
            ) -> None:
    import torch
    import torch.distributed as dist
    from safetensors.torch import save_file

    model = engine.module
    # Reference logits of a few held-out inputs (the LM's and the classifier's), on every rank:
    # under ZeRO-3 a forward pass is a collective.
    rows = CalmRows(tokenizer, job.eval_rows[:4], job.train.max_seq_length, False)
    batch = rows.batch(list(range(len(rows.items))))
    model.eval()
    with torch.no_grad():
        read = batch.get("identity_mask")
        out = model(input_ids=batch["input_ids"].to(engine.device),
                    attention_mask=batch["attention_mask"].to(engine.device),
                    identity_mask=None if read is None else read.to(engine.device))
    partial = Path(job.stage_dir) / "export.partial"
    if rank == 0:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
    with strategy.gathered(model.parameters()):
        if rank == 0:
            base_kind = ("adapter" if job.lora is not None
                         else "frozen" if job.calm.freeze_base else "model")
            if base_kind != "frozen":
                model.base.save_pretrained(str(partial / base_kind))
            tokenizer.save_pretrained(str(partial / "tokenizer"))
            save_file({k: v.contiguous() for k, v in calm_state_dict(model).items()},
                      str(partial / "calm.safetensors"))
            meta = {"calm_config": job.calm.model_dump(mode="json"),
                    "num_cultures": len(job.culture_names), "num_labels": len(job.label_names),
                    "num_concepts": 0, "label_names": job.label_names,
                    "culture_names": job.culture_names, "base": base_kind,
                    "base_model_path": str(job.model_path), "dtype": job.dtype,
                    "max_seq_length": job.train.max_seq_length}
            (partial / "calm.json").write_text(json.dumps(meta, indent=2), "utf-8")
            check = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"],
                     "logits": out.logits.float().cpu().contiguous(),
                     "class_logits": out.class_logits.float().cpu().contiguous()}
            if read is not None:
                check["identity_mask"] = read
            save_file(check, str(partial / "check.safetensors"))
            (partial / "eval.json").write_text(json.dumps(scores, indent=2), "utf-8")
            publish_export(partial, job.export_dir, {
                "stage": job.stage, "global_step": step,
                "final_metrics": {"eval_accuracy": scores["accuracy"],
                                  "eval_macro_f1": scores["macro_f1"]}})
            worker_log.info(f"[{job.stage}] exported to {job.export_dir}")
    if dist.is_initialized():
        dist.barrier()

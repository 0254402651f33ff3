"""English quality of a late-interaction teacher against all-MiniLM-L6-v2 pooled.

The teacher of ``recipes/teacher_minilm_colbert.yaml`` is MiniLM fine-tuned for MaxSim
on English train splits (AfriQA translations, MAFAND inverse-cloze pairs). This scores
it on an English task held out from that training, XQuAD-R en->en (a question retrieves
the sentence holding its answer, among the sentences of the split's articles; the recipe
selects on ``dev``, so report ``test``), beside MiniLM as it was trained (pooled) and
MiniLM read token by token with no training (MaxSim, zero-shot). Significance: the
paired randomisation test against MiniLM pooled and against MiniLM MaxSim zero-shot, on
the same queries.

Prints one JSON line per system: ``{"bench": "teacher", "task", "split", "system",
"map", "ndcg@10", "recall@10", "vs_minilm_pooled": {"delta_map", "p"}, ...,
"seconds"}``.

    python benchmarks/bench_teacher.py --teacher optical_runs/teacher_minilm_colbert/model
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_real import Encoder, emit_line, rank_collection

from optical_ray.config import from_flat
from optical_ray.data import real
from optical_ray.evaluation.ranking import paired_test
from optical_ray.models.encoder import RetrievalModel


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", required=True, metavar="DIR", help="teacher model dir")
    ap.add_argument("--shared", default=None, help="shared data folder")
    ap.add_argument("--splits", default="dev,test")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    real.shared_data_dir(args.shared)  # fail early, one line
    keys = {"model.max_query_length": 32, "model.max_doc_length": 128}
    systems = {
        "minilm_pooled": RetrievalModel.from_config(
            from_flat({"model.name_or_path": "minilm", "model.scoring": "pooled", **keys})
        ),
        "minilm_maxsim_zero_shot": RetrievalModel.from_config(
            from_flat({"model.name_or_path": "minilm", "model.scoring": "late_interaction", **keys})
        ),
        "teacher_maxsim": RetrievalModel.load(args.teacher),
    }
    systems["teacher_maxsim"].cfg.max_query_length = 32
    systems["teacher_maxsim"].cfg.max_doc_length = 128
    for split in [s for s in args.splits.split(",") if s]:
        col = real.xquad_r_collection("en", "en", split, shared=args.shared)
        per_system: dict[str, dict] = {}
        for name, model in systems.items():
            t0 = time.perf_counter()
            means, per_q = rank_collection(Encoder(model), col)
            row = {
                "bench": "teacher",
                "task": "xquad_r_en_en",
                "split": split,
                "system": name,
                "queries": len(per_q),
                **{m: round(v, 4) for m, v in means.items()},
            }
            for ref in ("minilm_pooled", "minilm_maxsim_zero_shot"):
                if ref in per_system:  # what the training adds, beside what MaxSim adds
                    delta, p = paired_test(per_q, per_system[ref], "map")
                    row[f"vs_{ref}"] = {"delta_map": round(delta, 4), "p": round(p, 4)}
            per_system[name] = per_q
            row["seconds"] = round(time.perf_counter() - t0, 1)
            emit_line(row)


if __name__ == "__main__":
    main()

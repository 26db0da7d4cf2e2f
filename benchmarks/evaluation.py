"""Evaluation throughput: MMLU-format scoring vs lm-evaluation-harness, and MIA scoring batched vs one by one.

MMLU: the model and question file of tests/test_mmlu.py (a small random-weight OLMo with a tokenizer trained on
MMLU-format prompts, `general_knowledge()` questions), exported as local lm-eval tasks (one per subject, the same
prompt); lm-eval 0.4.13 runs offline on the in-memory model through HFLM. Predictions must be identical.
MIA: per-token statistics of the micro organism's forget + holdout documents, batch 16 vs batch 1; every attack's
statistic must agree to TOL.
"""
from __future__ import annotations

import os
import tempfile

import numpy as np
import torch

from . import TOL, Section, goal, measure, table


def mc_model():
    from transformers import OlmoConfig, OlmoForCausalLM

    from workbench.data.multiple_choice import general_knowledge
    from workbench.evaluation import mmlu
    from workbench.organism import train_tokenizer

    gk = general_knowledge()
    texts = [mmlu.build_prompt(q) + f" {q.answer_letter}" for q in gk] * 3
    tok = train_tokenizer(texts, vocab_size=400)
    torch.manual_seed(0)
    cfg = OlmoConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                     num_attention_heads=4, max_position_embeddings=1024, initializer_range=0.3,
                     pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id)
    return OlmoForCausalLM(cfg).eval(), tok, gk


def lm_eval_predictions(model, tok, gk, shots, tmp) -> list[int]:
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from workbench.evaluation import mmlu

    names = mmlu.export_lm_eval_tasks(gk, tmp)
    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=16)
    res = lm_eval.simple_evaluate(model=lm, tasks=names, num_fewshot=shots, log_samples=True,
                                  task_manager=TaskManager(include_path=str(tmp), include_defaults=False))
    test = [q for q in gk if q.split == "test"]
    out = {}
    for name in names:
        subject_qs = [i for i, q in enumerate(test) if q.subject == name[len("wb_mmlu_"):]]
        for s in res["samples"][name]:
            ll = [r[0] for r in s["filtered_resps"]]
            out[subject_qs[s["doc_id"]]] = max(range(4), key=ll.__getitem__)
    return [out.get(i, -1) for i in range(len(test))]


def run(quick: bool = False, log=print) -> Section:
    import logging

    from workbench import harness
    from workbench.evaluation import mia, mmlu

    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.getLogger("lm-eval").setLevel(logging.ERROR)
    rows, goals, md = [], [], []
    model, tok, gk = mc_model()
    n_test = sum(q.split == "test" for q in gk)
    for shots in ((0,) if quick else (0, 5)):
        log(f"evaluation: MMLU {shots}-shot")
        ours, t_ours, m_ours = measure(lambda: mmlu.evaluate_mmlu(model, tok, gk, shots=shots))
        with tempfile.TemporaryDirectory() as tmp:
            theirs, t_lm, m_lm = measure(lambda: lm_eval_predictions(model, tok, gk, shots, tmp))
        same = theirs == ours.predictions
        rows.append([f"{shots}-shot", n_test, t_ours, n_test / t_ours, m_ours, t_lm, n_test / t_lm, m_lm,
                     f"{sum(a == b for a, b in zip(theirs, ours.predictions))}/{n_test}", f"{t_lm / t_ours:.1f}x"])
        goals.append(goal(f"MMLU {shots}-shot vs lm-eval", t_lm / t_ours, 2.0, same))
    md.append("### MMLU-format evaluation vs lm-evaluation-harness\n\nSame in-memory model and questions "
              "(tests/test_mmlu.py setup); lm-eval time = the whole `simple_evaluate` call on local tasks (task "
              "building + requests), ours = the whole `evaluate_mmlu` call.\n\n"
              + table(["shots", "questions", "ours s", "ours q/s", "ours peak MiB", "lm-eval s", "lm-eval q/s",
                       "lm-eval peak MiB", "identical predictions", "speedup"], rows))

    log("evaluation: MIA")
    micro, mtok, corpus = harness.load_organism("micro")
    texts = [r.text for r in list(corpus.forget) + list(corpus.holdout)]
    if quick:
        texts = texts[:8]
    batched, t_b, m_b = measure(lambda: mia.token_stats(micro, mtok, texts, batch_size=16))
    single, t_1, m_1 = measure(lambda: mia.token_stats(micro, mtok, texts, batch_size=1))
    sb, s1 = mia.statistics(batched, texts), mia.statistics(single, texts)
    diff = max(float(np.abs(sb[a] - s1[a]).max()) for a in sb)
    md.append("\n### MIA scoring: batched vs one document at a time\n\n"
              f"micro organism, {len(texts)} documents (forget + holdout), attacks loss/zlib/min_k/min_k_pp.\n\n"
              + table(["mode", "docs", "seconds", "docs/s", "peak MiB", "max abs diff of statistics"],
                      [["batch 16", len(texts), t_b, len(texts) / t_b, m_b, f"{diff:.2e}"],
                       ["batch 1", len(texts), t_1, len(texts) / t_1, m_1, "-"]]))
    goals.append(goal("MIA docs/s batched vs one at a time", t_1 / t_b, 1.0, diff <= TOL,
                      "no numeric target in the issue; reported"))
    return Section("Evaluation", "\n".join(md), goals)

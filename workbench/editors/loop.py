"""The shared unlearning loop: batches, frozen-reference cache, AdamW, checkpoints, eval, resume.

Read top to bottom:
  encode/collate   records -> token batches; `labels` mark answer tokens (the record's `output` + EOS)
  Reference        what the frozen model must provide (RMU activations, reference log-probs), computed once
                   over the whole data set before training and looked up per batch; `cache=False` keeps a
                   frozen copy of the model instead and recomputes every step (twice the memory, ~2x forwards)
  Editor           base class of the methods (one per file, by name in editors/registry.py): name, Config,
                   defaults, presets, trainable-parameter patterns, reference needs, `loss(batch) -> (loss, stats)`
  train            phases (one per sequential stage) of AdamW steps with gradient accumulation, read top to
                   bottom: resume, then per step: step, evaluate, checkpoint (`_Run` holds the state); the data
                   order is a function of (seed, phase, epoch) only, so a resumed run sees exactly the
                   batches the killed one would have; checkpoints hold the trainable parameters, the
                   optimizer, the step, the editor state, the best-so-far weights and the RNG states.
"""
from __future__ import annotations

import contextlib
import copy
import functools
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..errors import EditError
from .config import LoopConfig


# ---------------------------------------------------------------- data
@dataclass
class Example:
    ids: list[int]
    n_prompt: int   # tokens of `input`; the rest are answer tokens
    task: str
    index: int      # position in its split's example list (the reference cache key)


@dataclass
class Batch:
    input_ids: torch.Tensor       # [batch, pos]
    attention_mask: torch.Tensor  # [batch, pos]
    labels: torch.Tensor          # [batch, pos], answer tokens, -100 elsewhere
    index: list[int]
    tasks: list[str]

    @property
    def lengths(self) -> list[int]:
        return self.attention_mask.sum(1).tolist()


def encode(tok, records, max_len: int) -> list[Example]:
    """input + ' ' + output + EOS, as the target model was trained; answer = ' ' + output + EOS."""
    out = []
    for i, r in enumerate(records):
        prompt = tok(r.input)["input_ids"]
        answer = tok(" " + r.output, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        ids = (prompt + answer)[:max_len]
        out.append(Example(ids, min(len(prompt), len(ids)), r.task, i))
    return out


def collate(examples: Sequence[Example], pad_id: int, device=None) -> Batch:
    width = max(len(e.ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)   # [batch, pos]
    mask = torch.zeros((len(examples), width), dtype=torch.long)         # [batch, pos]
    labels = torch.full((len(examples), width), -100, dtype=torch.long)  # [batch, pos]
    for row, e in enumerate(examples):
        n = len(e.ids)
        ids[row, :n] = torch.tensor(e.ids)
        mask[row, :n] = 1
        labels[row, e.n_prompt:n] = ids[row, e.n_prompt:n]
    return Batch(ids.to(device), mask.to(device), labels.to(device), [e.index for e in examples],
                 [e.task for e in examples])


# ---------------------------------------------------------------- frozen reference
class Reference:
    """Per-example tensors from the *frozen* model, keyed by (split, example index).

    `fns[split](model, batch)` returns [batch, pos, ...] (per-token) or [batch] (per-example) tensors.
    With cache=True they are computed once, before any update, and stored per example (cut to its
    length); otherwise a deep copy of the model is kept frozen and the fn runs on it every step."""

    def __init__(self, model, fns: dict[str, Callable], data: dict[str, list[Example]], pad_id: int,
                 cache: bool = True, batch_size: int = 16, progress: bool = False):
        self.fns, self.pad_id, self.cache = fns, pad_id, cache
        self.store: dict[str, list[torch.Tensor]] = {}
        self.frozen = None
        if not fns:
            return
        if cache:
            from .. import distributed

            device = next(model.parameters()).device
            was_training = model.training
            model.eval()
            with torch.no_grad():
                for split, fn in fns.items():
                    found: dict[int, torch.Tensor] = {}
                    exs = data[split]
                    # several processes: each caches its share of the batches, and every process gets them all
                    for s in tqdm(distributed.split(range(0, len(exs), batch_size), model), desc=f"cache {split}",
                                  disable=not progress):
                        b = collate(exs[s:s + batch_size], pad_id, device)
                        out = fn(model, b)
                        found.update({s + i: out[i, :n].detach().clone() if out.dim() >= 2 else out[i].detach().clone()
                                      for i, n in enumerate(b.lengths)})
                    found = distributed.gather(found)
                    self.store[split] = [found[i].to(device) for i in range(len(exs))]
            model.train(was_training)
        else:
            self.frozen = copy.deepcopy(model).eval().requires_grad_(False)

    def get(self, split: str, batch: Batch) -> torch.Tensor:
        if self.frozen is not None:
            with torch.no_grad():
                return self.fns[split](self.frozen, batch)
        rows = [self.store[split][i] for i in batch.index]
        if rows[0].dim() == 0:
            return torch.stack(rows)
        width = batch.input_ids.shape[1]
        return torch.stack([F.pad(r, (0, 0) * (r.dim() - 1) + (0, width - r.shape[0])) for r in rows])

    def all(self, split: str) -> list[torch.Tensor]:
        return self.store.get(split, [])

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for rows in self.store.values() for t in rows)


# ---------------------------------------------------------------- editors
class Editor:
    """One unlearning method. A subclass, in its own file and registered in editors/registry.py, sets

        name       the method name (CLI --method, registry key, log field)
        Config     its config dataclass (a LoopConfig)
        defaults   organism-tuned values of Config's fields for this method (over the dataclass defaults)
        presets    named settings, e.g. a paper's: {preset name: {field: value}}
        uses       the splits a batch holds ("forget", "retain", or one of `extra_data`'s)

    and implements `loss(batch) -> (loss, stats)`, and where it needs them `param_patterns`, `reference_fns`,
    `setup`, `start_epoch`, `state_dict` / `load_state_dict` (state a resumed run continues with), `describe` and
    `optimises` (the membership statistics it trains on)."""

    name = "base"
    Config: type[LoopConfig] = LoopConfig
    defaults: dict[str, Any] = {}
    presets: dict[str, dict[str, Any]] = {}
    uses: tuple[str, ...] = ("forget", "retain")
    primary: str | None = None   # the split an epoch passes over (None: forget when used, else retain)

    def __init__(self, model, cfg, layers: Sequence[int]):
        self.model, self.cfg, self.layers = model, cfg, list(layers)
        self.ref: Reference | None = None

    @classmethod
    def phases(cls, model, cfg, layers: Sequence[int]) -> list[Phase]:
        """What the loop runs for this method: one phase, this editor for cfg.epochs at cfg.lr."""
        return [Phase(cls(model, cfg, layers), cfg.epochs, cfg.lr)]

    def param_patterns(self) -> list[str]:
        return list(self.cfg.params)

    @classmethod
    def extra_data(cls, model, tok, corpus, cfg) -> dict[str, list[Example]]:
        """Splits this method trains on besides the forget and retain QA answers ({name: examples}); read by
        editors.unlearn before any update."""
        return {}

    @classmethod
    def optimises(cls, cfg) -> set[str]:
        """The membership-inference statistics this method, under `cfg`, trains towards a target (names of
        workbench.evaluation.mia.ATTACKS). The verdict's privacy line is decided by the attacks outside them, so an
        editor that matches a statistic must declare it here. Calibrated forgetting (editors/calibration.py)
        matches `calibration_statistics`."""
        return set(cfg.calibration_statistics) if cfg.calibrate else set()

    def reference_fns(self) -> dict[str, Callable]:
        return {}

    def setup(self, ref: Reference, data: dict[str, list[Example]]) -> None:
        self.ref = ref

    def bind(self, model) -> None:
        """Run this editor's forwards through `model`: the loop's multi-process view of the same weights
        (editors/parallel.py), or the plain model again."""
        self.model = model

    def start_epoch(self, epoch: int) -> None:
        pass

    def loss(self, batch: dict[str, Batch]) -> tuple[torch.Tensor, dict]:
        raise NotImplementedError

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def describe(self) -> dict:
        return {}


@dataclass
class Phase:
    editor: Editor
    epochs: int
    lr: float


# ---------------------------------------------------------------- checkpoints (editors/checkpoint.py: read, write)
CHECKPOINT = "checkpoint.safetensors"


# ---------------------------------------------------------------- the loop
def _order(n: int, seed: int, phase: int, epoch: int, salt: int) -> list[int]:
    g = torch.Generator().manual_seed(seed * 1_000_003 + phase * 10_007 + epoch * 101 + salt)
    return torch.randperm(n, generator=g).tolist()


def _plan(phases: list[Phase], data: dict[str, list[Example]], cfg: LoopConfig) -> list[tuple[int, int, int]]:
    """(phase, steps per epoch, steps in phase) for each phase, capped by max_steps overall."""
    plan, left = [], cfg.max_steps if cfg.max_steps is not None else math.inf
    for p, ph in enumerate(phases):
        n = len(data[_primary(ph.editor)])
        spe = math.ceil(math.ceil(n / cfg.batch_size) / cfg.grad_accum)
        steps = int(min(ph.epochs * spe, left))
        left -= steps
        plan.append((p, spe, steps))
    return plan


def lr_at(cfg: LoopConfig, lr: float, step: int, steps: int) -> float:
    """The learning rate of a phase's step: constant, or ("cosine") a linear warm-up over `warmup_steps` then a
    cosine decay to 0 at the phase's last step."""
    if cfg.lr_schedule == "constant":
        return lr
    return lr * min(1.0, (step + 1) / max(1, cfg.warmup_steps)) * 0.5 * (1 + math.cos(math.pi * step / steps))


def _primary(editor: Editor) -> str:
    """The split whose passes make an epoch: the editor's `primary`, else forget when it uses it, else retain."""
    return editor.primary or ("forget" if "forget" in editor.uses else "retain")


def _micro_batches(editor: Editor, data, cfg: LoopConfig, phase: int, epoch: int, step_in_epoch: int,
                   pad_id: int, device) -> list[dict[str, Batch]]:
    """The micro-batches of one optimizer step: a pure function of (seed, phase, epoch, step)."""
    prim = _primary(editor)
    n = len(data[prim])
    order = _order(n, cfg.seed, phase, epoch, 0)
    n_micro = math.ceil(n / cfg.batch_size)
    out = []
    for j in range(step_in_epoch * cfg.grad_accum, min((step_in_epoch + 1) * cfg.grad_accum, n_micro)):
        idx = order[j * cfg.batch_size:(j + 1) * cfg.batch_size]
        mb = {prim: collate([data[prim][i] for i in idx], pad_id, device)}
        for other in editor.uses:
            if other != prim:  # the secondary split cycles through its own shuffled order
                m = len(data[other])
                o2 = _order(m, cfg.seed, phase, epoch, 1)
                mb[other] = collate([data[other][o2[(j * cfg.batch_size + k) % m]] for k in range(len(idx))],
                                    pad_id, device)
        out.append(mb)
    return out


class _Run:
    """The state of one `train` call and the four things the loop does with it: resume, step, evaluate, checkpoint.

    `params` are the model's own trainable parameters; `live` are those the optimizer updates: the same ones,
    except under FSDP2, which trains a sharded copy and copies its weights into the model before every evaluation
    and at the end."""

    def __init__(self, model, phases: list[Phase], cfg: LoopConfig, work_dir: Path,
                 params: dict[str, torch.nn.Parameter], log, run_key: dict[str, str]):
        from .. import distributed

        self.model, self.phases, self.cfg, self.log, self.run_key = model, phases, cfg, log, run_key
        self.work_dir, self.ckpt_path = work_dir, work_dir / CHECKPOINT
        self.par = None   # under `accelerate launch`: the data-parallel wrapper (editors/parallel.py)
        if distributed.launched():
            from .parallel import Parallel

            self.par = Parallel()
        self.params, self.names, self.live = params, list(params), params
        self.opt = None
        self.state = {"step": 0, "best_score": -math.inf, "best_step": None, "best": None, "evals": []}
        self.saved_step: int | None = None   # the step of the last checkpoint written (None: none yet)

    def optimizer(self, lr: float, trainable: dict[str, torch.nn.Parameter] | None = None):
        trainable = self.live if trainable is None else trainable
        return torch.optim.AdamW([trainable[n] for n in self.names], lr=lr, weight_decay=self.cfg.weight_decay)

    # ---- resume
    def resume(self) -> int:
        """Restore this run's last checkpoint, if any: trainable weights, optimizer, step, best-so-far, editor states
        and RNG states. Returns the phase to start in. Several processes: the model is wrapped here, with the
        optimizer of that phase (FSDP2 replaces the parameters)."""
        from .. import distributed
        from .checkpoint import check_resumable, read_run_checkpoint, set_rng_state

        # read by the main process, which sends it to the others (they may be on other machines)
        ck = distributed.on_main(functools.partial(read_run_checkpoint, self.work_dir, self.ckpt_path),
                                 f"checkpoint {self.ckpt_path}", share=True)
        start_phase = 0
        if ck is not None:
            check_resumable(ck, self.run_key, self.ckpt_path, self.work_dir)
            start_phase = ck["phase"]
        if self.par is not None:
            lr = self.phases[start_phase].lr
            self.live, self.opt = self.par.prepare(self.model, self.names,
                                                   lambda trainable: self.optimizer(lr, trainable))
            for ph in self.phases:
                ph.editor.bind(self.par.forward)
        if ck is None:
            return start_phase
        with torch.no_grad():
            for n in self.names:
                saved = ck["params"][n]
                self.live[n].copy_(saved if self.par is None else self.par.like(saved, self.live[n]))
        self.state.update({k: ck[k] for k in ("step", "best_score", "best_step", "best", "evals")})
        for ph, es in zip(self.phases, ck["editor_states"]):
            ph.editor.load_state_dict(es)
        if self.opt is None:
            self.opt = self.optimizer(self.phases[start_phase].lr)
        self.opt.load_state_dict(ck["optimizer"] if self.par is None else
                                 self.par.optimizer_state_like(ck["optimizer"], [self.live[n] for n in self.names]))
        set_rng_state(ck["rng"])
        self.log("resume", step=self.state["step"], phase=start_phase, checkpoint=str(self.ckpt_path))
        self.saved_step = self.state["step"]
        return start_phase

    # ---- step
    def step(self, ph: Phase, micro: list[dict[str, Batch]]) -> dict[str, float]:
        """One optimizer update: gradients accumulated over the micro-batches, clipped, applied. Returns the
        micro-batches' mean loss and stats (and the gradient norm)."""
        par, names, step = self.par, self.names, self.state["step"]
        ckpt_path = self.ckpt_path
        sums: dict[str, float] = {}
        for j, mb in enumerate(micro):
            # several processes synchronise gradients once per step, after the last micro-batch
            with contextlib.nullcontext() if par is None else par.no_sync(j == len(micro) - 1):
                loss, stats = ph.editor.loss(mb)
                if not torch.isfinite(loss):
                    raise EditError(
                        f"non-finite loss ({loss.item()}) at step {step} of {ph.editor.name} "
                        f"(stats {({k: round(v, 4) for k, v in stats.items()})}); training stopped. The last good "
                        f"checkpoint is {ckpt_path}; lower lr (now {ph.lr}) or use float32")
                if par is None:
                    (loss / len(micro)).backward()
                else:
                    par.backward(loss / len(micro))
            for k, v in {"loss": loss.item(), **stats}.items():
                sums[k] = sums.get(k, 0.0) + v / len(micro)
        if self.cfg.max_grad_norm:
            trained = [self.live[n] for n in names]
            gnorm = (torch.nn.utils.clip_grad_norm_(trained, self.cfg.max_grad_norm) if par is None else
                     par.clip_grad_norm(trained, self.cfg.max_grad_norm))
            if not torch.isfinite(gnorm):
                raise EditError(f"non-finite gradient norm at step {step} of {ph.editor.name}; "
                                f"last good checkpoint is {ckpt_path}; lower lr (now {ph.lr})")
            sums["grad_norm"] = float(gnorm)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.state["step"] += 1
        return sums

    # ---- evaluate
    def evaluate(self, evaluate: Callable[[], tuple[float, dict]]) -> None:
        """Score the model now; keep its weights if it is the best so far (with keep_best)."""
        step = self.state["step"]
        if self.par is not None:
            self.par.copy_into(self.params, self.live)
        score, stats = evaluate()
        self.state["evals"].append({"step": step, "score": score, **stats})
        self.log("eval", step=step, score=score, **stats)
        if score > self.state["best_score"]:
            self.state.update(best_score=score, best_step=step,
                              best={n: self.params[n].detach().clone() for n in self.names}
                              if self.cfg.keep_best else None)

    # ---- checkpoint
    def checkpoint(self, phase: int) -> None:
        """Write what a resumed run needs to continue exactly (main process; FSDP2 shards made whole first)."""
        from .. import distributed
        from .checkpoint import rng_state, write_run_checkpoint

        payload = {"run_key": self.run_key, "phase": phase, "optimizer": self.opt.state_dict(),
                   "params": {n: self.live[n].detach() for n in self.names},
                   "editor_states": [ph.editor.state_dict() for ph in self.phases], "rng": rng_state(),
                   **{k: self.state[k] for k in ("step", "best_score", "best_step", "best", "evals")}}
        if self.par is not None:
            payload = self.par.whole(payload)  # by every process
        distributed.on_main(functools.partial(write_run_checkpoint, self.ckpt_path, payload, self.saved_step),
                            f"checkpoint {self.ckpt_path}")
        self.saved_step = self.state["step"]

    # ---- end
    def finish(self, step_times: list[float]) -> dict:
        """Unwrap the editors, restore the best evaluated weights (with keep_best); the run's summary."""
        self.model.eval()
        if self.par is not None:
            for ph in self.phases:
                ph.editor.bind(self.model)
        state, restored = self.state, False
        if self.cfg.keep_best and state["best"] is not None and state["best_step"] != state["step"]:
            with torch.no_grad():
                for n in self.names:
                    self.params[n].copy_(state["best"][n])
            restored = True
        return {"steps": state["step"], "best_step": state["best_step"], "best_score": state["best_score"],
                "restored_best": restored, "evals": state["evals"],
                "mean_step_seconds": sum(step_times) / len(step_times) if step_times else None}


def train(model, phases: list[Phase], data: dict[str, list[Example]], cfg: LoopConfig, work_dir: Path, *,
          pad_id: int, params: dict[str, torch.nn.Parameter], evaluate: Callable[[], tuple[float, dict]],
          log, run_key: dict[str, str], progress: bool = False, on_step: Callable[[int], None] | None = None) -> dict:
    """Run every phase; returns a summary. Resumes from work_dir/checkpoint.safetensors when its run key (hashes of
    the source model, the data and the config) equals `run_key`.

    Under `accelerate launch` with several processes the steps are data parallel (editors/parallel.py) and give
    the one-process result; only the main process writes the checkpoint, and a resume may use another number of
    processes."""
    from .. import distributed

    device = next(model.parameters()).device
    run = _Run(model, phases, cfg, work_dir, params, log, run_key)
    plan = _plan(phases, data, cfg)
    total = sum(p[2] for p in plan)
    if total == 0:
        raise EditError("the plan has no training steps (empty data or max_steps=0)")
    start_phase = run.resume()

    bar = tqdm(total=total, initial=run.state["step"], desc=f"unlearn:{phases[0].editor.name}",
               disable=not progress or not distributed.is_main())
    step_times: list[float] = []
    done_before = 0   # steps of the phases before this one
    model.train()
    for p, spe, steps in plan:
        if p < start_phase or run.state["step"] >= done_before + steps:   # done before the resume
            done_before += steps
            continue
        ph = phases[p]
        if run.opt is None or p != start_phase:
            run.opt = run.optimizer(ph.lr)  # a fresh optimizer per stage, as separate runs would have
            start_phase = p
            if run.state["step"] == 0:
                run.checkpoint(p)  # a last-good checkpoint exists from the very start
        while run.state["step"] < done_before + steps:
            epoch, s_epoch = divmod(run.state["step"] - done_before, spe)
            if s_epoch == 0 or not step_times:
                ph.editor.start_epoch(epoch)
            t0 = time.perf_counter()
            for g in run.opt.param_groups:
                g["lr"] = lr_at(cfg, ph.lr, run.state["step"] - done_before, steps)
            sums = run.step(ph, _micro_batches(ph.editor, data, cfg, p, epoch, s_epoch, pad_id, device))
            step_times.append(time.perf_counter() - t0)
            step = run.state["step"]
            log("step", step=step, phase=p, method=ph.editor.name, epoch=epoch, lr=ph.lr,
                step_seconds=round(step_times[-1], 5), **sums)
            bar.update(1)
            bar.set_postfix(loss=f"{sums['loss']:.3f}")
            last = step == total
            if (cfg.eval_every and step % cfg.eval_every == 0) or last:
                model.eval()
                run.evaluate(evaluate)
                model.train()
            if step % cfg.checkpoint_every == 0 or last or step == done_before + steps:
                run.checkpoint(p)
            if on_step is not None:
                on_step(step)
        done_before += steps
    bar.close()
    return run.finish(step_times)

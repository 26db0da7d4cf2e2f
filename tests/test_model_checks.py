"""Models that are what they claim: a checkpoint whose weights do not match its config (missing, extra or reshaped
tensors, a header that lies, no tokenizer, a vocabulary larger than the embedding) is refused with the keys named,
before transformers initialises anything at random; `evaluate` refuses an edit of another original or shape."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from workbench.cli import main
from workbench.errors import ConfigError, ModelLoadError

from test_content_keys import micro_copy, perturb


def _config(d: Path, **changes) -> None:
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, **changes}))


def _cut_vocabulary(d: Path, rows: int = 300) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(d / "model.safetensors"))
    for k in ("model.embed_tokens.weight", "lm_head.weight"):
        tensors[k] = tensors[k][:rows].clone()
    save_file(tensors, str(d / "model.safetensors"), metadata={"format": "pt"})
    _config(d, vocab_size=rows)


def _lying_header(d: Path) -> None:
    """The header says one tensor is half its size; the data and every byte range stay as they were."""
    path = d / "model.safetensors"
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = raw[8:8 + n].decode()
    at = header.index('"model.layers.0.mlp.up_proj.weight"')
    shape = header.index('"shape":[256,64]', at)
    header = header[:shape] + '"shape":[128,64]' + header[shape + len('"shape":[128,64]'):]
    path.write_bytes(raw[:8] + header.encode() + raw[8 + n:])


def _no_tokenizer(d: Path) -> None:
    for f in d.glob("tokenizer*"):
        f.unlink()


BROKEN = {
    "8 layers in config.json, 4 in the weights (D6)": (lambda d: _config(d, num_hidden_layers=8),
                                                      r"28 tensor\(s\) the config needs are not in the weights "
                                                      r"\(model\.layers\.4\."),
    "2 layers in config.json: the model cut short (D6)": (lambda d: _config(d, num_hidden_layers=2),
                                                        r"14 tensor\(s\) in the weights are not in the config's model "
                                                        r"\(model\.layers\.2\."),
    "num_hidden_layers -3 (T3)": (lambda d: _config(d, num_hidden_layers=-3),
                                  "gives num_hidden_layers = -3; expected a whole number >= 1"),
    "intermediate_size 128 for weights of 256 (T3)": (lambda d: _config(d, intermediate_size=128),
                                                      r"shape\(s\) differ \(model\.layers\.0\.mlp\.\w+_proj\.weight "
                                                      r"is \[\d+, \d+\] in the weights but"),
    "vocab_size 300, embeddings cut to 300 rows (T3)": (_cut_vocabulary,
                                                       "the tokenizer has 512 tokens but the model's embedding has "
                                                       "300 rows"),
    "a safetensors header that lies about a shape (T3)": (_lying_header,
                                                         r"model\.layers\.0\.mlp\.up_proj\.weight': shape \[128, 64\] "
                                                         "of F32 is 32768 bytes, but its data range holds 65536"),
    "no tokenizer files (T3)": (_no_tokenizer, "has no tokenizer"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_a_checkpoint_that_is_not_what_its_config_says_is_refused_naming_why(case, micro, tmp_path, capsys):
    model, _ = micro_copy(tmp_path)
    breaks, msg = BROKEN[case]
    breaks(model)
    assert main(["trace", "--model", str(model), "--prompt", "What did Ann dream of becoming?", "--subject", "Ann",
                 "--answer", "botanist", "--samples", "2", "--kinds", "mlp", "--formats", "none",
                 "--out", str(tmp_path / "t")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("workbench trace: error:") and "\n" not in err and "Traceback" not in err, err
    assert __import__("re").search(msg, err), err
    assert str(model) in err


def test_the_check_reads_headers_only_and_accepts_the_real_checkpoint(micro, tmp_path, monkeypatch):
    """The comparison runs before transformers is asked for any weights, and passes a checkpoint that is whole."""
    import transformers
    from transformers import AutoConfig

    from workbench.models import check_checkpoint

    model, _ = micro_copy(tmp_path)
    check_checkpoint(model, AutoConfig.from_pretrained(model))        # the real one passes
    _config(model, num_hidden_layers=8)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained",
                        classmethod(lambda *a, **k: pytest.fail("weights were loaded before the check")))
    from workbench.harness import load_model

    with pytest.raises(ModelLoadError, match="config.json does not match the weights"):
        load_model(model)


def test_tied_embeddings_may_be_absent_from_the_weights(micro, tmp_path):
    """A config that ties lm_head to the embeddings needs no lm_head tensor (transformers ties it on load)."""
    from safetensors.torch import load_file, save_file
    from transformers import AutoConfig

    from workbench.models import check_checkpoint

    model, _ = micro_copy(tmp_path)
    tensors = load_file(str(model / "model.safetensors"))
    del tensors["lm_head.weight"]
    save_file(tensors, str(model / "model.safetensors"), metadata={"format": "pt"})
    _config(model, tie_word_embeddings=True)
    check_checkpoint(model, AutoConfig.from_pretrained(model))
    _config(model, tie_word_embeddings=False)
    with pytest.raises(ModelLoadError, match=r"1 tensor\(s\) the config needs are not in the weights \(lm_head"):
        check_checkpoint(model, AutoConfig.from_pretrained(model))


def test_meta_device_is_refused_before_loading(capsys, tmp_path):
    assert main(["trace", "--model", "organism:micro", "--prompt", "Who is Ann?", "--subject", "Ann", "--answer", "x",
                 "--device", "meta", "--formats", "none", "--out", str(tmp_path / "t")]) == 2
    err = capsys.readouterr().err
    assert "device 'meta' holds shapes without data" in err and "Traceback" not in err


# ---------------------------------------------------------------- evaluate: D5, T4
@pytest.fixture(scope="module")
def edit_of_micro(micro, tmp_path_factory):
    """An edit of micro (1 step of ga at layer 0), as `workbench unlearn` writes it."""
    out = tmp_path_factory.mktemp("edit") / "e"
    assert main(["unlearn", "--model", "organism:micro", "--method", "ga", "--layers", "0", "--steps", "1", "--quiet",
                 "--out", str(out)]) == 0
    return out


def test_evaluate_refuses_an_edit_of_another_model_unless_told(edit_of_micro, tmp_path, capsys, monkeypatch):
    import workbench.report

    other, data = micro_copy(tmp_path / "other")
    perturb(other)                                               # another original: micro's weights, moved
    capsys.readouterr()
    argv = ["evaluate", "--model", str(other), "--data", str(data), "--edited", str(edit_of_micro), "--limit", "1",
            "--no-trace", "--max-new-tokens", "4", "--out", str(tmp_path / "ev")]
    monkeypatch.setattr(workbench.report, "evaluate", lambda *a, **k: pytest.fail("evaluated a foreign edit"))
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "the edited model" in err and "was made from" in err and "--allow-foreign-edit" in err, err
    assert "Traceback" not in err and not (tmp_path / "ev" / "report.json").exists()

    monkeypatch.undo()
    assert main([*argv, "--allow-foreign-edit"]) == 0
    err = capsys.readouterr().err
    assert "warning: foreign edit" in err
    report = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert report["provenance"]["foreign_edit"].startswith("foreign edit: the edited model")
    assert "foreign edit" in (tmp_path / "ev" / "report.html").read_text()


def test_evaluate_accepts_an_edit_of_the_original_it_is_given(edit_of_micro, tmp_path, micro):
    from workbench.commands.evaluate import check_edit_source

    model, _, _ = micro
    assert check_edit_source(str(edit_of_micro), "organism:micro", model, allow=False) is None


def test_an_edit_of_another_shape_is_refused(micro, tiny_olmo):
    """T4: the original and the edit must be the same architecture (here 4 layers against 3)."""
    from workbench.commands.evaluate import check_same_shape

    model, _, _ = micro
    with pytest.raises(ConfigError, match="num_hidden_layers 3 vs 4"):
        check_same_shape(model, tiny_olmo[0], "organism:micro", "tiny")
    check_same_shape(model, model, "organism:micro", "organism:micro")

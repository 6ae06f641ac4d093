"""Every generating benchmark takes `decode` and hands it to the engine: an unknown path is
refused by the engine (so the option reached it), and `static` answers exactly as `plain`."""

from __future__ import annotations

import pytest
from test_rwku import rwku_dir  # noqa: F401 -- the tiny RWKU directory fixture

import obliviate.api as ob
from obliviate.errors import UserError


def _options(benchmark: str, rwku_root) -> dict:
    if benchmark == "rwku":
        return dict(data=str(rwku_root), targets="1", ds_size=1, utility="none", cache=False)
    return dict(ds_size=2, max_new_tokens=6, judge_agreement=False, batch_size=4)


def _outputs(envelope: dict) -> list[str]:
    """Every generated text of an envelope, in order."""
    texts = []
    for task in envelope["tasks"].values():
        for item in task.get("items", []):
            texts += [value for key, value in item.items() if key in ("output", "generated")]
    return texts


@pytest.mark.parametrize("benchmark", ["rwku", "harmful"])
def test_decode_reaches_the_engine(tmp_path, tiny_model_and_tokenizer, rwku_dir, benchmark):  # noqa: F811
    model, tokenizer = tiny_model_and_tokenizer
    options = _options(benchmark, rwku_dir)
    with pytest.raises(UserError, match="decode must be one of auto, plain, static, got 'warp'"):
        ob.evaluate(model, tokenizer, benchmark=benchmark, output_dir=tmp_path / "bad", precision="fp32",
                    progress=False, decode="warp", **options)
    runs = {decode: ob.evaluate(model, tokenizer, benchmark=benchmark, output_dir=tmp_path / decode, precision="fp32",
                                progress=False, decode=decode, **options).envelope for decode in ("plain", "static")}
    assert _outputs(runs["plain"]), "the benchmark generated nothing to compare"
    assert _outputs(runs["static"]) == _outputs(runs["plain"])
    assert runs["static"]["summary"] == runs["plain"]["summary"] | {"model": runs["static"]["summary"]["model"]}

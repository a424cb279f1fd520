"""The model contract (arcore/contract.py): a model class is checked when it registers, so a capability declared
without the method it promises, or a required method left unwritten, is one clear error at import, not an
``AttributeError`` deep inside a validation loop; and the optional parts are reached only through the capability
that declares them."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from arcore.contract import Capabilities, ContractError, check_model_class, half_weights, resynthesizer
from arcore.files.media import Text
from arcore.files.registry import MODELS, register_model
from arcore.training.module import AutoregressiveModule
from pixelgen.pixelcnn import PixelCNN
from wavegen.wavenet import WaveNet

ROOT = Path(__file__).resolve().parents[1]


class Unigram(AutoregressiveModule):
    """The smallest model: one table of logits for every position."""

    renders = Text

    def __init__(self) -> None:
        super().__init__()
        self.num_classes, self.event_shape = 3, (4,)
        self.table = torch.nn.Parameter(torch.zeros(3))

    def forward(self, codes: torch.Tensor, cond: object = None) -> torch.Tensor:
        return self.table.expand(*codes.shape, 3)

    def render_samples(self, codes: torch.Tensor) -> Text:
        return Text(tuple("".join("abc"[int(c)] for c in row) for row in codes))


def test_the_shipped_models_and_a_small_one_keep_the_contract():
    for cls in (PixelCNN, WaveNet, Unigram):
        check_model_class(cls)
    assert register_model("contract-test", Unigram) is Unigram
    assert MODELS["tests.test_contract.Unigram"] == ("contract-test", Unigram)
    del MODELS["tests.test_contract.Unigram"]


@pytest.mark.parametrize("flag,method", [("resynthesis", "resynthesize"), ("half_weights", "round_weights_to_half")])
def test_a_capability_declared_without_its_method_is_refused_at_registration(flag, method):
    bad = type("Boasting", (Unigram,), {"capabilities": Capabilities(**{flag: True})})
    with pytest.raises(ContractError) as refused:
        register_model("contract-test", bad)
    message = str(refused.value)
    assert len(message.splitlines()) == 1
    assert f"Boasting declares {flag} in its capabilities but has no {method} method" in message
    assert f"drop {flag}=True" in message
    assert "tests.test_contract.Boasting" not in MODELS
    good = type("Keeping", (bad,), {method: lambda self, *args, **kwargs: 0.0})
    check_model_class(good)  # the method written: accepted


def test_a_required_method_left_unwritten_is_refused():
    no_render = type("Silent", (AutoregressiveModule,), {"forward": Unigram.forward, "renders": Text})
    with pytest.raises(ContractError, match=r"Silent does not write render_samples: every model must"):
        check_model_class(no_render)
    no_forward = type("Blind", (AutoregressiveModule,), {"render_samples": Unigram.render_samples, "renders": Text})
    with pytest.raises(ContractError, match=r"Blind does not write forward\(codes, cond\)"):
        check_model_class(no_forward)
    undeclared = type("Vague", (AutoregressiveModule,), {"forward": Unigram.forward,
                                                        "render_samples": Unigram.render_samples})
    with pytest.raises(ContractError, match=r"Vague does not declare what it renders: set the class attribute "):
        check_model_class(undeclared)


def test_a_model_class_breaking_the_contract_fails_at_import(tmp_path):
    """In a user's file the error comes at import, one line, naming the class."""
    (tmp_path / "boasting_model.py").write_text(textwrap.dedent("""
        from arcore.contract import Capabilities
        from arcore.files.registry import register_model
        from tests.test_contract import Unigram

        class Vocoder(Unigram):
            capabilities = Capabilities(resynthesis=True)

        register_model("pixelgen", Vocoder)
    """))
    done = subprocess.run([sys.executable, "-c", "import boasting_model"], cwd=ROOT, capture_output=True, text=True,
                          env={"PYTHONPATH": f"{tmp_path}:{ROOT}", "PATH": ""}, check=False, timeout=120)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        "arcore.contract.ContractError: Vocoder declares resynthesis in its capabilities but has no resynthesize "
        "method (arcore.contract.Resynthesizer): write it, or drop resynthesis=True")


def test_optional_parts_are_reached_through_their_capability():
    vocoder = WaveNet(dilations=[1], residual_channels=2, gate_channels=2, skip_channels=2, head_channels=2,
                      quantization=4, n_mels=4, hop_length=4, cond_channels=2)
    plain = WaveNet(dilations=[1], residual_channels=2, gate_channels=2, skip_channels=2, head_channels=2,
                    quantization=4)
    assert resynthesizer(vocoder) is vocoder and half_weights(plain) is plain  # WaveNet's capabilities: a property
    with pytest.raises(ContractError, match="a WaveNet does not declare resynthesis"):
        resynthesizer(plain)
    with pytest.raises(ContractError, match="a Unigram does not declare half_weights"):
        half_weights(Unigram())

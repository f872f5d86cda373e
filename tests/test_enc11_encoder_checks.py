"""An encoder run given to another method (`--backbone encoder:RUN` for patchknn and flow,
`--from RUN` for kmeans) must get that run's channels and size: one check
(`kmeans.encoder_mismatch`), one wording, before anything is written. A run trained on another
size before this was checked still loads, with a warning; a module given through the API is
refused by its first layer's channels, not by a torch error."""

from __future__ import annotations

import warnings

import pytest
import torch
from helpers import tiny_config

from anomaly import build
from anomaly.backbones import build_backbone
from anomaly.pipeline import load_run, score_run, train_run
from anomaly.runs import RunDir

SAID = "its encoder was trained on 1-channel images at 64 px and takes only those"


def _on_encoder(data, encoder, method: str, **overrides):
    backbone = f"encoder:{encoder}"
    return tiny_config(data, method, backbone=backbone, coreset_ratio=0.5, epochs=1, **overrides)


@pytest.mark.parametrize("method", ["patchknn", "flow"])
def test_another_size_than_the_encoders_is_refused_before_writing(
    method, scored_ae_run, tiny_cookies, tmp_path
):
    """`train --method patchknn --backbone encoder:AE64 --size 128` trained without a word on
    an encoder that learned every part at 64 px."""
    out = tmp_path / method
    with pytest.raises(ValueError) as refused:
        train_run(_on_encoder(tiny_cookies, scored_ae_run, method, size=128), out)
    said = str(refused.value)
    assert said.startswith(f"--backbone encoder:{scored_ae_run}: {SAID}, not 1-channel ones at")
    assert "another scale" in said and "use --size 64 (or leave it out: train then takes" in said
    assert not out.exists()


def test_kmeans_and_an_encoder_backbone_say_it_the_same_way(scored_ae_run, tiny_cookies, tmp_path):
    asked = {"size": 128, "channels": 3}
    with pytest.raises(ValueError) as backbone:
        train_run(_on_encoder(tiny_cookies, scored_ae_run, "patchknn", **asked), tmp_path / "p")
    source = RunDir(scored_ae_run).config()
    kmeans = source.replace(method="kmeans", source_run=str(scored_ae_run), **asked)
    with pytest.raises(ValueError) as from_run:
        train_run(kmeans, tmp_path / "k")
    rest = f"{SAID}, not 3-channel ones at 128 px"
    assert str(backbone.value) == (
        f"--backbone encoder:{scored_ae_run}: {rest}, where it would see every part at another "
        "scale than it learned; use --channels 1 --size 64 (or leave them out: train then takes "
        "the encoder run's), or train an ae, unet or vae run at 128 px to take them from"
    )
    assert str(from_run.value).startswith(f"--from {scored_ae_run}: {rest}")
    assert "use --channels 1 --size 64 (or leave them out: kmeans takes its" in str(from_run.value)


def test_a_run_trained_on_another_size_before_the_check_loads_with_a_warning(
    scored_ae_run, tiny_cookies, tmp_path, monkeypatch
):
    old = tmp_path / "old"
    with monkeypatch.context() as before:  # as this version's predecessor trained it
        before.setattr(build, "check_encoder", lambda *args, **kwargs: None)
        train_run(_on_encoder(tiny_cookies, scored_ae_run, "patchknn", size=96), old)
    with pytest.warns(UserWarning, match=f"{old} was trained before this was refused.*{SAID}"):
        load_run(old)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pred, _ = score_run(old, overlays=False)  # it still scores, as it did
    assert pred.maps.shape[-1] == 96


class _Encoder(torch.nn.Module):
    def __init__(self, channels: int = 3):
        super().__init__()
        self.conv = torch.nn.Conv2d(channels, 6, 3, stride=4, padding=1)

    def forward_features(self, x):
        return self.conv(x)


class _Bare(torch.nn.Module):
    """An encoder with no layer that names its input channels."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(6, 3, 3, 3))

    def forward_features(self, x):
        return torch.nn.functional.conv2d(x, self.weight, stride=4, padding=1)


def test_a_module_through_the_api_is_refused_by_its_first_layer():
    with pytest.raises(ValueError) as refused:
        build_backbone("encoder:mine", in_channels=1, module=_Encoder(3))
    assert str(refused.value) == (
        "this encoder takes only 3-channel images (its first layer), not 1-channel ones; "
        "use --channels 3"
    )
    assert build_backbone("encoder:mine", in_channels=3, module=_Encoder(3)).stride == [4]
    with pytest.raises(ValueError, match="does not take 1-channel images"):  # the last resort
        build_backbone("encoder:mine", in_channels=1, module=_Bare())


def test_train_takes_the_encoders_size_and_channels_when_not_given(
    scored_ae_run, tiny_cookies, tmp_path, capsys
):
    """`train --method patchknn --backbone encoder:RUN` without --size got patchknn's 224 px and
    3 channels, which an auto-encoder run almost never has: refused, told to pass both."""
    from anomaly.cli import main

    out = tmp_path / "p"
    code = main(
        ["train", "--method", "patchknn", "--data", str(tiny_cookies), "--out", str(out),
         "--backbone", f"encoder:{scored_ae_run}", "--coreset-ratio", "0.5", "--device", "cpu"]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    trained, encoder = RunDir(out).config(), RunDir(scored_ae_run).config()
    assert (trained.size, trained.channels) == (encoder.size, encoder.channels)

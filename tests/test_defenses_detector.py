"""The adversarial-example detector (Metzen et al. 2017) and the adaptive attack that evades it (Carlini &
Wagner 2017), on ``cnn-small`` trained on the bundled 8x8 digits.

Measured here (seed 0, eps 0.2 L∞, 5 epochs): detection AUC 0.999 / 0.998 against the attacks it was trained
on (FGSM, PGD), 0.998 / 0.999 against the unseen L∞ attacks BIM and MI-FGSM, 0.90 against DeepFool and 0.76
against C&W L2 (unseen, minimum-norm: much smaller perturbations); at the threshold for 5 % false positives
(set on half of the test split), naive PGD on the classifier leaves 0.6 % of the other half misclassified and
unflagged (99 % flagged), the adaptive PGD 80 % (1 % flagged).
"""

from __future__ import annotations

import copy
import json
import warnings
from collections.abc import Iterator

import numpy as np
import pytest
import torch

import advlab
from advlab.defenses import (
    Detector,
    DetectorConfig,
    EvasionModel,
    adaptive_attack,
    default_layer,
    defense_spec,
    detection_roc,
    detector_evasion,
    evasion_rate,
    train_detector,
)

EPS = 0.2


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return (*advlab.load_dataset("digits", "train"), *advlab.load_dataset("digits", "test"))


@pytest.fixture(scope="module")
def digits_clf() -> torch.nn.Module:
    """``cnn-small`` trained on the digits with its default recipe (about 98 % test accuracy, a few seconds)."""
    return advlab.train.train_model("cnn-small", "digits", seed=0, threads=1).model


@pytest.fixture(scope="module")
def trained(digits_clf: torch.nn.Module, data: tuple) -> Iterator[tuple[Detector, dict]]:
    """The detector of the behaviour tests (FGSM + PGD at EPS, 5 epochs), with the classifier's state before."""
    before = {k: v.clone() for k, v in digits_clf.state_dict().items()}
    digits_clf.zero_grad(set_to_none=True)  # training left gradients behind; the detector must add none
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        det = train_detector(digits_clf, data[0], data[1], eps=EPS, epochs=5,
                             generator=torch.Generator().manual_seed(0))
        yield det, before
    finally:
        torch.set_num_threads(threads)


def _small(data: tuple, n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    return data[0][:n], data[1][:n]


def test_classifier_stays_frozen_and_record(trained: tuple[Detector, dict], digits_clf: torch.nn.Module) -> None:
    det, before = trained
    after = digits_clf.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in digits_clf.parameters())
    assert not digits_clf.training and not det.training
    assert det.layer == default_layer(digits_clf) == 2
    rec = det.record
    assert rec["attacks"] == ["fgsm", "pgd"] and rec["eps"] == EPS and rec["norm"] == "linf"
    assert rec["activation_shape"] == [32, 4, 4] and rec["attack_options"] == {"fgsm": {}, "pgd": {"steps": 10}}
    assert rec["detection_accuracy"] > 0.95
    json.dumps(rec)


def test_auc_on_trained_and_unseen_attacks(
    trained: tuple[Detector, dict], digits_clf: torch.nn.Module, data: tuple, one_thread: None
) -> None:
    det, _ = trained
    x, y = data[2], data[3]
    g = torch.Generator().manual_seed(1)
    runs = {
        "fgsm": lambda: advlab.attacks.fgsm(digits_clf, x, y, eps=EPS),
        "pgd": lambda: advlab.attacks.pgd(digits_clf, x, y, eps=EPS, generator=g),
        "bim": lambda: advlab.attacks.bim(digits_clf, x, y, eps=EPS),
        "mifgsm": lambda: advlab.attacks.mifgsm(digits_clf, x, y, eps=EPS),
        "deepfool": lambda: advlab.attacks.deepfool(digits_clf, x, y, eps=8.0, norm="l2"),
        "cw": lambda: advlab.attacks.cw(digits_clf, x, y, eps=8.0),
    }
    auc = {}
    for name, run in runs.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", advlab.attacks.RobustnessWarning)
            result = run()
        auc[name] = detection_roc(det, x, result.x_adv[0])["auc"]
    print("detection AUC:", {k: round(v, 3) for k, v in auc.items()})
    assert auc["fgsm"] >= 0.97 and auc["pgd"] >= 0.97  # trained on
    assert auc["bim"] >= 0.95 and auc["mifgsm"] >= 0.95  # unseen, same threat model
    assert auc["deepfool"] >= 0.75 and auc["cw"] >= 0.6  # unseen L2 minimum-norm attacks: above chance


def test_naive_attack_detected_adaptive_attack_evades(
    trained: tuple[Detector, dict], data: tuple, one_thread: None
) -> None:
    det, _ = trained
    x, y = data[2], data[3]
    calib, xe, ye = x[:180], x[180:], y[180:]
    report = detector_evasion(det, xe, ye, eps=EPS, x_calibration=calib, steps=100,
                              generator=torch.Generator().manual_seed(2))
    print("naive:", report["naive"], "adaptive:", report["adaptive"])
    json.dumps(report, allow_nan=False)
    clean_fpr = float((det.scores(xe) > report["threshold"]).float().mean())
    assert clean_fpr <= 0.15  # set for 5 % on the calibration half
    naive, adaptive = report["naive"], report["adaptive"]
    assert naive["misclassified"] >= 0.9 and naive["flagged"] >= 0.9 and naive["evasion_rate"] <= 0.1
    assert adaptive["evasion_rate"] >= 0.7
    assert adaptive["auc"] < 0.75 < naive["auc"]


def test_adaptive_attack_success_means_misclassified_and_undetected(
    trained: tuple[Detector, dict], data: tuple, one_thread: None
) -> None:
    det, _ = trained
    x, y = data[2][:40], data[3][:40]
    t = det.threshold_at(data[2][40:], fpr=0.05)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", advlab.attacks.AlreadyAtTargetWarning)
        r = adaptive_attack(det, x, y, eps=EPS, threshold=t, steps=50, generator=torch.Generator().manual_seed(3))
    x_adv = r.x_adv[0]
    assert float((x_adv - x).abs().max()) <= EPS + 1e-6
    logits, d = det.outputs(x_adv)
    hit = r.success[0]
    assert hit.float().mean() >= 0.7
    assert bool((logits.argmax(1)[hit] == r.labels[hit]).all()) and bool((r.labels != y).all())
    assert bool((d[hit] <= t).all())
    rate = evasion_rate(det, x_adv, y, threshold=t)
    assert rate["evasion_rate"] >= float(hit.float().mean())


def test_evasion_model_last_class_wins_exactly_when_flagged(trained: tuple[Detector, dict], data: tuple) -> None:
    det, _ = trained
    x = torch.cat([data[2][:50], advlab.attacks.fgsm(det.classifier, data[2][:50], data[3][:50], eps=EPS).x_adv[0]])
    t = det.threshold_at(data[2], fpr=0.05)
    joint = EvasionModel(det, threshold=t).eval()
    with torch.no_grad():
        z = joint(x)
        flagged = det(x) > t
    assert z.shape == (100, 11) and joint.bounds == (0.0, 1.0)
    assert torch.equal(z.argmax(1) == 10, flagged) and 0 < int(flagged.sum()) < 100


def test_roc_shapes_and_monotone(trained: tuple[Detector, dict], data: tuple) -> None:
    det, _ = trained
    x = data[2]
    noisy = (x + 0.15 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    roc = detection_roc(det, x, noisy[:200], batch_size=64)
    json.dumps(roc, allow_nan=False)
    fpr, tpr, thr = (np.array(roc[k]) for k in ("fpr", "tpr", "thresholds"))
    assert len(fpr) == len(tpr) == len(thr) >= 2 and roc["n_clean"] == 360 and roc["n_adv"] == 200
    assert fpr[0] == 0 and tpr[0] == 0 and fpr[-1] == 1 and tpr[-1] == 1
    assert (np.diff(fpr) >= 0).all() and (np.diff(tpr) >= 0).all() and (np.diff(thr) < 0).all()
    assert roc["auc"] == pytest.approx(float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2)), abs=1e-9)
    s = det.scores(torch.cat([x, noisy[:200]]))
    assert thr[0] > float(s.max())  # the first point flags nothing
    # a perfect separator and a useless one
    assert detection_roc(lambda z: z.flatten(1).mean(1), x * 0.4, x * 0.4 + 0.6)["auc"] == 1.0
    assert detection_roc(lambda z: torch.zeros(len(z)), x, x)["auc"] == 0.5


def test_threshold_at_and_calibrate(trained: tuple[Detector, dict], data: tuple) -> None:
    det = copy.deepcopy(trained[0])
    x = data[2]
    s = det.scores(x)
    for fpr in (0.0, 0.05, 0.2, 1.0):
        t = det.threshold_at(x, fpr=fpr)
        allowed = int(fpr * len(s) + 1e-9)
        assert int((s > t).sum()) <= allowed
        assert int((s >= t).sum()) > allowed or fpr == 1.0  # the lowest such threshold
    t = det.calibrate(x, fpr=0.05)
    assert det.threshold == t and det.record["calibration"]["fpr"] == 0.05
    assert int(det.detect(x).sum()) <= int(0.05 * len(x))


def test_same_seed_same_detector_and_flat_layer(digits_clf: torch.nn.Module, data: tuple, one_thread: None) -> None:
    x, y = _small(data)
    make = lambda seed: train_detector(digits_clf, x, y, eps=EPS, layer=9, epochs=1, width=16,  # noqa: E731
                                       generator=torch.Generator().manual_seed(seed))
    a, b, c = make(0), make(0), make(1)
    assert a.record["activation_shape"] == [128] and a(x[:3]).shape == (3,)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    assert not all(torch.equal(p, q) for p, q in zip(a.head.parameters(), c.head.parameters(), strict=True))


def test_attack_without_kernel_and_registry(digits_clf: torch.nn.Module, data: tuple, one_thread: None) -> None:
    x, y = _small(data, 32)
    det = train_detector(digits_clf, x, y, eps=2.0, attacks=["deepfool"], norm="l2", epochs=1,
                         attack_options={"deepfool": {"overshoot": 0.05}}, generator=torch.Generator().manual_seed(0))
    assert det.record["attacks"] == ["deepfool"] and det.record["attack_options"]["deepfool"] == {
        "steps": 10, "overshoot": 0.05}
    spec = defense_spec("detector")
    assert spec.kind == "detector" and spec.config is DetectorConfig and "detector" in advlab.list_defenses("detector")
    config = spec.make_config({"epochs": 1, "attacks": ("fgsm",), "width": 8})
    built = spec.build(config, digits_clf, x, y, eps=0.1, generator=torch.Generator().manual_seed(0))
    assert isinstance(built, Detector) and built.record["epochs"] == 1 and built.record["width"] == 8


def test_bad_input(digits_clf: torch.nn.Module, data: tuple) -> None:
    x, y = _small(data, 8)

    def train(**kw: object) -> Detector:
        kw = {"eps": 0.1, "epochs": 1, **kw}
        return train_detector(digits_clf, x, y, **kw)  # type: ignore[arg-type]

    with pytest.raises(ValueError, match=r"unknown attack 'nope'; expected one of .*pgd"):
        train(attacks=("fgsm", "nope"))
    with pytest.raises(ValueError, match=r"does not support norm 'l2'; attacks that do: .*pgd"):
        train(attacks=("fgsm",), norm="l2")
    with pytest.raises(ValueError, match=r"layer 99 is out of range.*0\.\.11"):
        train(layer=99)
    with pytest.raises(ValueError, match="layer must be an integer >= 0"):
        train(layer=-1)
    with pytest.raises(TypeError, match="layer must be an integer"):
        train(layer=2.0)
    for bad in (0, -0.1):
        with pytest.raises(ValueError, match="eps must be > 0"):
            train(eps=bad)
    with pytest.raises(TypeError, match="eps must be a number"):
        train(eps="0.1")
    with pytest.raises(ValueError, match=r"attack_options name attack.*pgd"):
        train(attack_options={"pgd": {"steps": 3}}, attacks=("fgsm",))
    with pytest.raises(ValueError, match="has no option"):
        train(attack_options={"pgd": {"stepz": 3}})
    with pytest.raises(ValueError, match="bounds"):
        train_detector(digits_clf, x * 3, y, eps=0.1)
    with pytest.raises(ValueError, match=r"class indices in \[0, 10\)"):
        train_detector(digits_clf, x, y + 10, eps=0.1)
    resnet = advlab.create_model("resnet-tiny", in_shape=(1, 8, 8), num_classes=10)
    with pytest.raises(TypeError, match=r"nn\.Sequential"):
        train_detector(resnet, x, y, eps=0.1)
    with pytest.raises(TypeError, match="non-empty sequence"):
        DetectorConfig(attacks=())


def test_bad_input_after_training(trained: tuple[Detector, dict], data: tuple) -> None:
    det, _ = trained
    x, y = data[2][:8], data[3][:8]
    with pytest.raises(ValueError, match=r"result\.x_adv\[i\]"):
        detection_roc(det, x, x[None])
    with pytest.raises(ValueError, match="fpr must be <= 1"):
        det.threshold_at(x, fpr=1.5)
    with pytest.raises(ValueError, match=r"no targeted mode.*pgd"):
        adaptive_attack(det, x, y, eps=EPS, attack="deepfool")
    with pytest.raises(TypeError, match="Detector"):
        adaptive_attack(det.classifier, x, y, eps=EPS)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="eps must be > 0"):
        adaptive_attack(det, x, y, eps=0.0)
    with pytest.raises(ValueError, match="scale must be > 0"):
        EvasionModel(det, scale=0.0)

"""The HTML report of a results store: its sections, the numbers in its tables (computed here from the records
by hand), escaping, no external URL, every image a valid embedded PNG, CSV/Markdown exports, determinism, and
the ``advlab report`` command's errors (empty store, missing store, newer schema, existing outputs)."""

from __future__ import annotations

import base64
import csv
import io
import re
import sqlite3
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
import torch

from advlab.evaluate._evaluation import Check, Evaluation, StageCost
from advlab.evaluate._transfer import TransferMatrix
from advlab.report import SECTION_IDS, TABLE_NAMES, Table, render_report, report_tables, write_report
from advlab.report.grid import save_record_grid
from advlab.store import Record, ResultStore
from test_cli_errors import cli as run_cli
from test_cli_errors import error_line

EVIL = "<script>alert('x')</script>"
EPS = [0.05, 0.1, 0.2]
N = 8
VERSIONS = {"advlab": "0.1.0", "torch": "2.13.0", "numpy": "2.0", "python": "3.11"}
# robust points out of N per (model, suite) at each budget of EPS; clean correct points per model
ROBUST = {
    ("mlp", "standard"): [5, 3, 1], ("mlp", "fast"): [6, 3, 2],
    ("mlp+pgd", "standard"): [7, 6, 4], ("mlp+pgd", "fast"): [7, 7, 5],
    ("evil", "standard"): [4, 2, 0],
}
CLEAN = {"mlp": 7, "mlp+pgd": 7, "evil": 6}
MODELS = {"mlp": {"name": "mlp", "defense": None}, "mlp+pgd": {"name": "mlp", "defense": "pgd-at", "eps": 0.1},
          "evil": {"name": EVIL, "defense": None}}
LABELS = {"mlp": "mlp", "mlp+pgd": "mlp + pgd-at", "evil": EVIL}


def _check(name: str, status: str, adaptive: str | None = None) -> Check:
    return Check(name, status, message=f"{name} saw <b>{status}</b> 3 of 8 points",  # type: ignore[arg-type]
                 meaning=f"{name} meaning & more", advice=f"{name} advice: try adaptive", adaptive=adaptive)


def _evaluation(model: str, suite: str, checks: list[Check]) -> Evaluation:
    counts = ROBUST[(model, suite)]
    robust = torch.zeros(len(EPS), N, dtype=torch.bool)
    for i, c in enumerate(counts):
        robust[i, :c] = True
    clean = torch.zeros(N, dtype=torch.bool)
    clean[: CLEAN[model]] = True
    attacks = ["apgd-ce", "square"] if suite == "standard" else ["fgsm"]
    stages = []
    alive = CLEAN[model]
    for e, c in zip(EPS, counts, strict=True):
        for k, a in enumerate(attacks):
            broken = alive - c if k == 0 else 0
            stages.append(StageCost(eps=e, attack=a, n_attacked=alive, n_broken=broken, robust_accuracy=c / N,
                                    n_forward=alive * (10 + k), n_backward=alive * 10 * (1 - k),
                                    n_queries=alive * 50 * k, seconds=0.01, pass_budget=20 + k))
            alive -= broken
    return Evaluation(suite=suite, norm="linf", eps=list(EPS), n=N, clean_correct=clean, robust=robust,
                      broken_by=torch.full((len(EPS), N), -1), distances=torch.full((len(EPS), N), float("nan")),
                      x_adv=torch.zeros(len(EPS), N, 1, 2, 2), attack_names=attacks, stages=stages, config={},
                      seconds=1.5, x=torch.zeros(N, 1, 2, 2), y=torch.zeros(N, dtype=torch.long), checks=checks)


def robustness_record(model: str, suite: str, checks: list[Check], artifacts: dict[str, bytes] | None = None,
                      started: str = "2024-05-01T10:00:00Z") -> Record:
    ev = _evaluation(model, suite, checks)
    d = ev.to_dict()
    metrics = {k: v for k, v in d.items() if k not in ("checks", "cost", "config")}
    config = {"kind": "robustness", "dataset": "digits", "model": MODELS[model], "seed": 0, "suite": suite,
              "norm": "linf", "eps": list(EPS), "n": N}
    return Record.for_config("robustness", config, metrics, cost=d["cost"], seeds={"seed": 0}, versions=VERSIONS,
                             model_hash=f"hash-{model}", checks=d["checks"], started=started,
                             finished="2024-05-01T10:05:00Z", artifacts=artifacts or {})


def _trained_softmax() -> torch.nn.Module:
    """Softmax regression on digits, fitted by a few full-batch gradient steps (about 90 % test accuracy)."""
    import advlab
    from advlab.models import create_model

    model = create_model("softmax", dataset="digits", generator=torch.Generator().manual_seed(0))
    x, y = advlab.load_dataset("digits", "train")
    params = [p for p in model.parameters() if p.requires_grad]
    for _ in range(30):
        loss = torch.nn.functional.cross_entropy(model(x[:512]), y[:512])
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            for p, g in zip(params, grads, strict=True):
                p -= 2.0 * g
    return model.eval()


def _transfer(eps: float) -> TransferMatrix:
    return TransferMatrix(names=["mlp", "cnn", "tree"], attacks={"mlp": "pgd", "cnn": "pgd", "tree": None},
                          targets_only={"tree": "no input gradient"},
                          rates=[[0.9, 0.4, 0.3], [0.5, 0.95, 0.2], None],
                          clean_accuracy={"mlp": 0.9, "cnn": 0.95, "tree": 0.8},
                          n_correct={"mlp": 9, "cnn": 9, "tree": 8},
                          eps=eps, norm="linf", n=10, seconds={"mlp": 0.1, "cnn": 0.2}, config={"seed": 0})


def make_records(tmp: Path) -> dict[str, Any]:
    """The records of the tests: three models (one defended, one with a hostile name) x two suites, a failed
    active test and a warning, an FGSM attack record with a real image grid, two transfer records (one with
    its heatmap, one without), a training and a black-box record."""
    import advlab
    from advlab.evaluate import evaluate_attack

    fail = _check("active-test", "fail", adaptive="bpda")
    warn = _check("single-step", "warn")
    ok = [_check(n, "pass") for n in ("eps-monotone", "gradients")]
    skip = _check("randomised", "skip")
    rob = {
        ("mlp", "standard"): robustness_record("mlp", "standard", [warn, *ok]),
        ("mlp", "fast"): robustness_record("mlp", "fast", [*ok, skip]),
        ("mlp+pgd", "standard"): robustness_record("mlp+pgd", "standard", [fail, *ok]),
        ("mlp+pgd", "fast"): robustness_record("mlp+pgd", "fast", ok),
        ("evil", "standard"): robustness_record("evil", "standard", ok, started="2024-04-30T09:00:00Z"),
    }
    model = _trained_softmax()
    x, y = advlab.load_dataset("digits", "test")
    ev = evaluate_attack(model, x[:16], y[:16], "fgsm", eps=[0.05, 0.1, 0.2], norm="linf")
    grid = save_record_grid(ev, model, tmp / "grid.png").read_bytes()
    attack_cfg = {"kind": "attack", "dataset": "digits", "model": MODELS["mlp"], "seed": 0, "attack": "fgsm",
                  "norm": "linf", "eps": [0.05, 0.1, 0.2], "n": 16}
    attack = Record.for_config("attack", attack_cfg, ev.to_dict(), seeds={"seed": 0}, versions=VERSIONS,
                               cost={"n_forward": ev.n_forward, "n_backward": ev.n_backward,
                                     "n_queries": ev.n_queries, "seconds": ev.seconds},
                               artifacts={"grid.png": grid}, started="2024-05-02T00:00:00Z",
                               finished="2024-05-02T00:00:01Z")
    heat = _transfer(0.1).save_heatmap(tmp / "heat.png").read_bytes()
    tcfg = {"kind": "transfer", "dataset": "digits", "model": {"name": "zoo"}, "seed": 0, "attack": "pgd",
            "norm": "linf"}
    transfer = Record.for_config("transfer", {**tcfg, "eps": 0.1}, _transfer(0.1).to_dict(),
                                 artifacts={"heatmap.png": heat})
    transfer2 = Record.for_config("transfer", {**tcfg, "eps": 0.3}, _transfer(0.3).to_dict())
    train = Record.for_config("train", {"kind": "train", "dataset": "digits", "model": MODELS["mlp+pgd"], "seed": 0},
                              {"clean_accuracy": 0.875, "checkpoint": "runs/mlp-pgd", "defense": "pgd-at",
                               "epochs": 3})
    blackbox = Record.for_config("blackbox", {"kind": "blackbox", "dataset": "digits", "model": MODELS["mlp"],
                                              "seed": 0, "attack": "fgsm"},
                                 {"attack": "fgsm", "eps": 0.3, "norm": "linf", "n": 10,
                                  "oracle_clean_accuracy": 0.9, "oracle_misclassification": 0.6,
                                  "substitute_accuracy": 0.7, "substitute_success": 0.8, "queries": 1500,
                                  "attack_queries": 10, "seconds": {"total": 2.0}})
    records = [*rob.values(), attack, transfer, transfer2, train, blackbox]
    return {"records": records, "rob": rob, "attack": attack, "grid": grid, "heat": heat, "transfer": transfer,
            "transfer2": transfer2, "ev": ev}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = make_records(tmp_path_factory.mktemp("report"))
    out["page"] = render_report(out["records"])
    out["tables"] = report_tables(out["records"])
    return out


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.sections: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag == "section":
            self.sections.append(dict(attrs).get("id") or "")


def parse(page: str) -> _Tags:
    p = _Tags()
    p.feed(page)
    return p


def section(page: str, sid: str) -> str:
    m = re.search(rf'<section id="{sid}">(.*?)</section>', page, re.S)
    assert m, f"no section {sid}"
    return m.group(1)


def pct(count: int) -> str:
    return f"{count / N:.1%}"


# ------------------------------------------------------------------------------------------------ the page


def test_sections_present_warnings_first(data: dict[str, Any]) -> None:
    tags = parse(data["page"])
    assert tags.sections[0] == "warnings"
    for sid in SECTION_IDS:
        assert sid in tags.sections
    assert tags.sections.index("summary") < tags.sections.index("curves") < tags.sections.index("table")
    assert {"blackbox", "train"} <= set(tags.sections)
    assert "<title>advlab robustness report</title>" in data["page"]


def test_warnings_section(data: dict[str, Any]) -> None:
    w = section(data["page"], "warnings")
    assert "Unreliable: 1 evaluation(s)" in w
    assert "mlp + pgd-at" in w
    # the failed check comes before the warning, each with what was seen, what it means, what to try
    assert w.index("active-test") < w.index("single-step")
    for name in ("active-test", "single-step"):
        assert f"{name} meaning &amp; more" in w and f"{name} advice: try adaptive" in w
        assert f"{name} saw &lt;b&gt;" in w
    assert "adaptive=&#x27;bpda&#x27;" in w
    assert "eps-monotone" not in w  # passing checks are not listed
    assert "2 of 13 self-checks warned or failed; 10 passed, 1 not applicable" in w


def test_all_checks_passed_line(data: dict[str, Any]) -> None:
    rec = robustness_record("mlp", "fast", [_check("gradients", "pass"), _check("eps-monotone", "pass")])
    w = section(render_report([rec]), "warnings")
    assert "All 2 self-checks passed, over 1 record(s)" in w and "alert" not in w
    bare = Record.for_config("attack", {"kind": "attack", "dataset": "d", "model": {"name": "m"}},
                             {"attack": "fgsm", "results": []})
    assert "No self-check was run" in section(render_report([bare]), "warnings")


def test_unreliable_flag_from_metrics_alone() -> None:
    rec = robustness_record("mlp", "fast", [])
    rec.metrics["reliable"] = False
    page = render_report([rec])
    assert "Unreliable: 1 evaluation(s)" in section(page, "warnings")
    assert report_tables([rec])["robustness"].column("reliable") == [False] * len(EPS)


def test_summary_is_the_worst_case(data: dict[str, Any]) -> None:
    t: Table = data["tables"]["summary"]
    rows = {r["model"]: r for r in t.records()}
    assert set(rows) == set(LABELS.values())
    for key, label in LABELS.items():
        suites = [s for (m, s) in ROBUST if m == key]
        row = rows[label]
        for i, e in enumerate(EPS):
            worst = min(ROBUST[(key, s)][i] for s in suites)
            worst_frac = worst / N
            if key == "mlp":  # the FGSM attack record is an evaluation of "mlp" too
                worst_frac = min(worst_frac, data["ev"].results[i]["robust_accuracy"])
            assert row[f"eps={e:g}"] == pytest.approx(worst_frac, abs=1e-12)
        assert row["reliable"] is (key != "mlp+pgd")
        assert row["dataset"] == "digits" and row["norm"] == "linf"
    assert rows["mlp + pgd-at"]["clean accuracy"] == CLEAN["mlp+pgd"] / N
    assert rows["mlp + pgd-at"]["evaluations"] == 2
    s = section(data["page"], "summary")
    assert pct(ROBUST[("mlp+pgd", "standard")][2]) in s  # 50.0%: worst at eps=0.2 for the defended model
    assert 'class="unreliable"' in s


def test_attack_defense_table(data: dict[str, Any]) -> None:
    t: Table = data["tables"]["attack_defense"]
    assert t.columns[:4] == ("dataset", "norm", "suite/attack", "eps")
    assert set(t.columns[4:]) == set(LABELS.values())
    cells = {(r["suite/attack"], r["eps"]): r for r in t.records()}
    for (model, suite), counts in ROBUST.items():
        for e, c in zip(EPS, counts, strict=True):
            assert cells[(f"suite {suite}", e)][LABELS[model]] == c / N
    assert cells[("suite fast", 0.1)][EVIL] is None  # never evaluated with that suite
    for i, e in enumerate(EPS):
        assert cells[("fgsm", e)]["mlp"] == data["ev"].results[i]["robust_accuracy"]
        worst = min(ROBUST[("mlp+pgd", s)][i] for s in ("standard", "fast"))
        assert cells[("worst case", e)]["mlp + pgd-at"] == worst / N
    assert cells[("clean", None)]["mlp + pgd-at"] == CLEAN["mlp+pgd"] / N
    assert "suite standard" in section(data["page"], "table")


def test_robustness_rows(data: dict[str, Any]) -> None:
    t: Table = data["tables"]["robustness"]
    assert t.columns == ("model", "dataset", "suite/attack", "norm", "eps", "n", "clean accuracy", "robust accuracy",
                         "reliable", "record")
    assert len(t.rows) == len(ROBUST) * len(EPS) + len(data["ev"].results)
    rows = {(r["model"], r["suite/attack"], r["eps"]): r for r in t.records()}
    for (model, suite), counts in ROBUST.items():
        for e, c in zip(EPS, counts, strict=True):
            row = rows[(LABELS[model], f"suite {suite}", e)]
            assert row["robust accuracy"] == c / N and row["clean accuracy"] == CLEAN[model] / N
            assert row["n"] == N and row["reliable"] is ((model, suite) != ("mlp+pgd", "standard"))
    assert rows[("mlp", "fgsm", 0.1)]["reliable"] is None  # no self-check ran on a single attack


def test_cost_table(data: dict[str, Any]) -> None:
    t: Table = data["tables"]["cost"]
    rec = data["rob"][("mlp+pgd", "standard")]
    mine = [r for r in t.records() if r["record"] == rec.key[:12]]
    total, stages = mine[0], mine[1:]
    assert total["stage"] == "total"
    assert total["forward passes"] == sum(s["n_forward"] for s in rec.metrics["stages"]) == rec.cost["n_forward"]
    assert total["seconds"] == 1.5
    assert [(s["stage"], s["eps"], s["forward passes"], s["backward passes"], s["queries"], s["attacked"],
             s["broken"]) for s in stages] == [
        (s["attack"], s["eps"], s["n_forward"], s["n_backward"], s["n_queries"], s["n_attacked"], s["n_broken"])
        for s in rec.metrics["stages"]]
    att = next(r for r in t.records() if r["record"] == data["attack"].key[:12])
    assert (att["forward passes"], att["backward passes"]) == (data["ev"].n_forward, data["ev"].n_backward)
    kinds = {r["kind"] for r in t.records()}
    assert kinds == {"robustness", "attack", "transfer", "train", "blackbox"}
    assert "apgd-ce" in section(data["page"], "cost")


def test_warnings_and_other_tables(data: dict[str, Any]) -> None:
    w: Table = data["tables"]["warnings"]
    assert [(r["check"], r["status"], r["model"]) for r in w.records()] == [
        ("active-test", "fail", "mlp + pgd-at"), ("single-step", "warn", "mlp")]
    assert w.records()[0]["adaptive"] == "bpda"
    tr: Table = data["tables"]["transfer"]
    rates = {(r["eps"], r["source"], r["target"]): r["rate"] for r in tr.records()}
    assert rates[(0.1, "mlp", "cnn")] == 0.4 and rates[(0.3, "cnn", "tree")] == 0.2
    assert not any(src == "tree" for _, src, _ in rates)  # a target only: no row
    assert data["tables"]["blackbox"].records()[0]["substitute success"] == 0.8
    assert data["tables"]["train"].records()[0]["clean accuracy"] == 0.875
    prov = data["tables"]["provenance"].records()
    assert {p["config hash"] for p in prov} == {r.key for r in data["records"]}
    assert tuple(data["tables"]) == TABLE_NAMES


def test_escaping(data: dict[str, Any]) -> None:
    page = data["page"]
    assert EVIL not in page and "<script" not in page.lower()
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert "<b>" not in page  # a check's message is data, not markup


def test_no_external_urls(data: dict[str, Any]) -> None:
    page = data["page"]
    tags = parse(page)
    for tag, attrs in tags.tags:
        assert tag not in ("script", "link", "iframe", "object", "embed", "base"), tag
        for name in ("src", "href", "srcset", "action", "poster"):
            value = attrs.get(name)
            if value is None:
                continue
            assert "http" not in value.lower() and not value.startswith("//"), (tag, name, value[:80])
            assert value.startswith(("#", "data:image/png;base64,")), (tag, name, value[:80])
    style = re.search(r"<style>(.*?)</style>", page, re.S)
    assert style and "url(" not in style.group(1) and "@import" not in style.group(1)


def _images(page: str) -> list[bytes]:
    out = []
    for tag, attrs in parse(page).tags:
        if tag == "img":
            src = attrs.get("src") or ""
            assert src.startswith("data:image/png;base64,"), src[:60]
            out.append(base64.b64decode(src.split(",", 1)[1], validate=True))
    return out


def test_every_image_is_a_valid_png(data: dict[str, Any]) -> None:
    from PIL import Image

    images = _images(data["page"])
    # one curves figure (digits, linf), two heatmaps, one grid
    assert len(images) == 4
    for raw in images:
        with Image.open(io.BytesIO(raw)) as img:
            img.verify()
        with Image.open(io.BytesIO(raw)) as img:
            assert img.format == "PNG" and img.size[0] > 100 and img.size[1] > 100
    assert data["grid"] in images and data["heat"] in images  # artifacts embedded as they are
    assert sum(raw not in (data["grid"], data["heat"]) for raw in images) == 2  # curves + a rendered heatmap
    assert 'id="grids"' in data["page"] and "fgsm (linf)" in section(data["page"], "grids")


def test_bad_artifact_is_not_embedded(data: dict[str, Any]) -> None:
    rec = robustness_record("mlp", "fast", [], artifacts={"grid.png": b"not a png"})
    page = render_report([rec])
    assert "is not a PNG image" in section(page, "grids")
    assert len(_images(page)) == 1  # the curves only


def test_deterministic_and_order_free(data: dict[str, Any]) -> None:
    again = render_report(list(reversed(data["records"])))
    assert again == data["page"]
    assert "generated" not in data["page"]
    assert "Report generated 2024-06-01" in render_report(data["records"][:1], generated_at="2024-06-01")
    assert "computed 2024-04-30T09:00:00Z to 2024-05-02T00:00:01Z" in data["page"]


def test_tolerates_missing_fields() -> None:
    sparse = [
        Record("a" * 64, "robustness", {"kind": "robustness"}, {"eps": [0.1], "robust_accuracy": [0.5]}),
        Record("b" * 64, "attack", {}, {"results": [{"eps": 0.1}], "attack": "pgd"}),
        Record("c" * 64, "transfer", {"kind": "transfer"}, {}),
        Record("d" * 64, "blackbox", {"model": "m"}, {}),
        Record("e" * 64, "train", {"model": {"name": "x", "defense": {"name": "trades"}}}, {"defense": None},
               checks=[{"status": "warn"}]),
    ]
    page = render_report(sparse)
    for sid in SECTION_IDS:
        assert f'<section id="{sid}">' in page
    tables = report_tables(sparse)
    rows = {r["suite/attack"]: r for r in tables["robustness"].records()}
    assert rows["suite ?"]["robust accuracy"] == 0.5 and rows["pgd"]["robust accuracy"] is None
    assert tables["train"].records()[0]["model"] == "x + trades"
    assert "no heatmap" in section(page, "transfer")


def test_same_name_different_models_are_told_apart() -> None:
    def rec(checkpoint: str) -> Record:
        cfg = {"kind": "attack", "dataset": "digits", "model": {"name": "mlp", "checkpoint": checkpoint}}
        return Record.for_config("attack", cfg, {"attack": "fgsm", "results": [{"eps": 0.1, "robust_accuracy": 0.5}]})

    models = report_tables([rec("runs/a"), rec("runs/b")])["summary"].column("model")
    assert len(set(models)) == 2 and all(m.startswith("mlp #") for m in models)


def test_empty_input_and_bad_items() -> None:
    with pytest.raises(ValueError, match="no records"):
        render_report([])
    with pytest.raises(TypeError, match="Record"):
        render_report([{"kind": "attack"}])  # type: ignore[list-item]


# ------------------------------------------------------------------------------------------------ files


def test_write_report_csv_and_markdown(data: dict[str, Any], tmp_path: Path) -> None:
    out = write_report(data["records"], tmp_path / "r.html", csv_dir=tmp_path / "csv", markdown=tmp_path / "r.md")
    assert out.read_text(encoding="utf-8") == data["page"]
    assert sorted(p.name for p in (tmp_path / "csv").iterdir()) == sorted(f"{n}.csv" for n in TABLE_NAMES)
    with open(tmp_path / "csv" / "attack_defense.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    got = {(r["suite/attack"], r["eps"]): r for r in rows}
    for (model, suite), counts in ROBUST.items():
        for e, c in zip(EPS, counts, strict=True):
            assert float(got[(f"suite {suite}", repr(e))][LABELS[model]]) == c / N
    assert got[("suite fast", "0.1")][EVIL] == ""  # blank where never evaluated; the name kept as it is in CSV
    with open(tmp_path / "csv" / "summary.csv", newline="", encoding="utf-8") as f:
        summary = {r["model"]: r for r in csv.DictReader(f)}
    assert summary["mlp + pgd-at"]["reliable"] == "false"
    assert float(summary["mlp + pgd-at"]["eps=0.2"]) == ROBUST[("mlp+pgd", "standard")][2] / N
    md = (tmp_path / "r.md").read_text(encoding="utf-8")
    assert md.startswith("# advlab robustness report")
    assert "| dataset | norm | model | n | clean accuracy |" in md
    assert f"| digits | linf | mlp + pgd-at | {N} | {pct(CLEAN['mlp+pgd'])} |" in md
    assert "| active-test | fail |" in md


def test_write_report_never_overwrites(data: dict[str, Any], tmp_path: Path) -> None:
    (tmp_path / "csv").mkdir()
    (tmp_path / "csv" / "cost.csv").write_text("keep")
    with pytest.raises(FileExistsError, match=r"cost\.csv"):
        write_report(data["records"][:1], tmp_path / "r.html", csv_dir=tmp_path / "csv")
    assert not (tmp_path / "r.html").exists() and (tmp_path / "csv" / "cost.csv").read_text() == "keep"
    write_report(data["records"][:1], tmp_path / "r.html", csv_dir=tmp_path / "csv", overwrite=True)
    assert (tmp_path / "csv" / "cost.csv").read_text().startswith("record,kind,")
    with pytest.raises(ValueError, match="two outputs"):
        write_report(data["records"][:1], tmp_path / "x.html", markdown=tmp_path / "x.html")


# ------------------------------------------------------------------------------------------------ the command


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Any:
    """Runs ``advlab ARGS`` through the real entry point (``test_cli_errors``' runner)."""
    monkeypatch.delenv("ADVLAB_DEBUG", raising=False)
    monkeypatch.setenv("ADVLAB_DEFAULT_MALLOC", "1")
    return lambda *args: run_cli(capsys, *args)


@pytest.fixture(scope="module")
def store(data: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("store") / "results.sqlite"
    with ResultStore(path) as s:
        for r in data["records"]:
            s.put(r)
    return path


def test_command_writes_the_report(cli: Any, store: Path, data: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    run = cli("report", store, "--out", out, "--csv", tmp_path / "csv", "--markdown", tmp_path / "r.md")
    assert run.code == 0, run
    lines = run.out.splitlines()
    assert lines[0] == str(out) and lines[1] == str(tmp_path / "r.md") and len(lines) == 2 + len(TABLE_NAMES)
    assert "1 evaluation(s) are unreliable" in run.err
    page = out.read_text(encoding="utf-8")
    assert page == data["page"]  # the store gives back the records; the page does not depend on their order
    assert len(_images(page)) == 4 and data["grid"] in _images(page)
    assert (tmp_path / "csv" / "summary.csv").exists()


def test_command_refuses_to_overwrite(cli: Any, store: Path, tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    out.write_text("keep")
    line = error_line(cli("report", store, "--out", out))
    assert "exists" in line and "--overwrite" in line and out.read_text() == "keep"
    (tmp_path / "csv").mkdir()
    (tmp_path / "csv" / "summary.csv").write_text("keep")
    line = error_line(cli("report", store, "--out", tmp_path / "new.html", "--csv", tmp_path / "csv"))
    assert "summary.csv" in line and not (tmp_path / "new.html").exists()
    assert cli("report", store, "--out", out, "--force").code == 0
    assert out.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    line = error_line(cli("report", store, "--out", store, "--force"))
    assert "input" in line


def test_command_empty_store(cli: Any, tmp_path: Path) -> None:
    path = tmp_path / "empty.sqlite"
    ResultStore(path).close()
    line = error_line(cli("report", path, "--out", tmp_path / "r.html"))
    assert line.startswith(f"advlab: error: the store {path} holds no records; run `advlab bench SPEC --store {path}` "
                           "or `advlab demo` first")
    assert not (tmp_path / "r.html").exists()


def test_command_missing_and_newer_store(cli: Any, store: Path, tmp_path: Path) -> None:
    line = error_line(cli("report", tmp_path / "nope.sqlite", "--out", tmp_path / "r.html"))
    assert "nope.sqlite" in line and "no results store" in line
    newer = tmp_path / "newer.sqlite"
    newer.write_bytes(store.read_bytes())
    with sqlite3.connect(newer) as conn:
        conn.execute("UPDATE meta SET value = '999' WHERE name = 'schema_version'")
    conn.close()
    line = error_line(cli("report", newer, "--out", tmp_path / "r.html"))
    assert "999" in line and "newer.sqlite" in line
    assert not (tmp_path / "r.html").exists()

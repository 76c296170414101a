"""The batch QC report: statistics per case, review flags and one self-contained ``OUT/report.html``.

:class:`Review` is what a batch needs: :meth:`Review.case` measures a predicted case (statistics, checks against
the model's plan, a thumbnail in ``OUT/qc/``), :meth:`Review.skipped` measures a case whose outputs exist from an
earlier run (from the files), and :meth:`Review.write` writes ``statistics.csv`` (with ``statistics``) and the
report: a table of the cases, worst first (sortable by any column with plain inline JavaScript: no network, no
server), each case's flags, key statistics, thumbnail and links to its files, the uncertainty overlay where it was
computed, and the batch's volume distributions (``OUT/qc/volumes.png``). For a model with lesion structures each
case also gets its lesion count and total lesion volume per lesion structure (``report.csv`` and the report), and
with ``statistics`` the batch gets ``lesion_statistics.csv`` (one row per lesion). See ``docs/statistics.md``.
"""

from __future__ import annotations

import difflib
import html
import json
import logging
from collections.abc import Sequence
from dataclasses import asdict
from importlib import resources
from pathlib import Path
from string import Template
from typing import Any

import numpy as np

from medseg_attn.errors import UserError
from medseg_attn.io.files import atomic_write_text
from medseg_attn.io.headers import load_nifti
from medseg_attn.io.layout import OutputLayout
from medseg_attn.io.tables import read_csv_rows, write_csv
from medseg_attn.io.volumes import affine_4x4
from medseg_attn.segmentation.data.fingerprint import case_features
from medseg_attn.segmentation.measures.lesion_statistics import (
    lesion_columns,
    lesion_summary,
    lesion_table,
    summary_columns,
)
from medseg_attn.segmentation.measures.structure_statistics import (
    case_statistics,
    read_case_statistics,
    write_case_statistics,
    write_statistics_csv,
)
from medseg_attn.segmentation.qc.fingerprint import fingerprint_flags
from medseg_attn.segmentation.qc.review import FLAG_KINDS, ReviewSettings, flag_cases, plan_flags

logger = logging.getLogger(__name__)

__all__ = ["Review", "render_report"]

MAX_VOLUME_COLUMNS = 8  # more structures: the table shows the total foreground volume instead


class Review:
    """Statistics, flags and the QC report of one batch.

    Args:
        names: class index -> structure name (the model's labels).
        plan_spacing, patch_size, intensity: the model's preprocessing (see :func:`plan_flags`).
        settings: how flags are raised.
        statistics: also write ``<case>_statistics.json`` per case and ``statistics.csv`` for the batch.
        fingerprint: the training set's fingerprint kept in the checkpoint (see
            :mod:`medseg_attn.segmentation.qc.fingerprint`): its flags replace the batch-relative volume and
            intensity checks and the fixed fragmentation limits; None: those run.
        lesion_structures: class names whose lesions (connected components) are counted per case; with
            ``statistics`` their rows make ``lesion_statistics.csv``.
        channels: the model's input channels (the intensity columns of the lesion table).
        missing_channels: the model's channels the inputs lack (``predict --channels``), filled as missing
            sequences: named in ``report.csv`` and ``report.html``.
    """

    def __init__(self, names: dict[int, str], plan_spacing: tuple[float, ...] | None, patch_size: tuple[int, ...],
                 intensity: str, settings: ReviewSettings | None = None, statistics: bool = False,
                 fingerprint: dict[str, Any] | None = None, lesion_structures: Sequence[str] = (),
                 channels: int = 1, missing_channels: Sequence[str] = ()) -> None:
        self.fingerprint = fingerprint or None  # the training set's ranges (qc.fingerprint); None: batch-relative
        self.names = {int(k): v for k, v in names.items() if int(k) != 0}
        self.plan_spacing, self.patch_size, self.intensity = plan_spacing, tuple(patch_size), intensity
        self.settings = settings or ReviewSettings()
        unknown = [name for name in self.settings.expected_volume_ml if name not in self.names.values()]
        if unknown:  # a misspelt structure would never be checked: refused, as unknown keys are
            close = difflib.get_close_matches(unknown[0], list(self.names.values()), n=1)
            known = ", ".join(self.names.values())
            hint = f"; did you mean {close[0]!r}?" if close else f"; the model's classes: {known}"
            raise UserError(f"--review-config/--review-set: expected_volume_ml.{unknown[0]}: the model has no class "
                             f"{unknown[0]!r}{hint}")
        self.statistics = statistics
        self.unit = "hu" if intensity == "ct" else None
        self.lesion_structures = tuple(lesion_structures)
        self.channels = channels
        self.missing_channels = tuple(missing_channels)

    @classmethod
    def for_predictor(cls, predictor: Any, settings: ReviewSettings | None = None, statistics: bool = False,
                      lesion_structures: Sequence[str] | None = None) -> Review:
        """The review of a :class:`~medseg_attn.segmentation.inference.predictor.Predictor`'s batch
        (``lesion_structures`` None: the predictor's own)."""
        prep = predictor.prep
        if lesion_structures is None:
            lesion_structures = getattr(predictor, "lesion_structures", ())
        return cls(predictor.labels, prep.spacing, predictor.patch_size, prep.intensity, settings, statistics,
                   getattr(predictor, "model_info", {}).get("training_fingerprint"), lesion_structures,
                   getattr(predictor, "in_channels", 1),
                   predictor.channels.missing if hasattr(predictor, "channels") else ())

    def report_columns(self) -> tuple[str, ...]:
        """The columns ``report.csv`` gets from the review: lesion count and total volume per lesion structure."""
        return summary_columns(self.lesion_structures) + (("missing_channels",) if self.missing_channels else ())

    def report_cells(self, record: dict[str, Any]) -> dict[str, Any]:
        """The :meth:`report_columns` of one batch record (empty when the case was not measured)."""
        summary = (record.get("review") or {}).get("lesions") or {}
        cells: dict[str, Any] = {"missing_channels": " ".join(self.missing_channels)} if self.missing_channels else {}
        for name in self.lesion_structures:
            entry = summary.get(name)
            cells[f"lesions_{name}"] = "" if entry is None else entry["lesions"]
            cells[f"lesion_volume_ml_{name}"] = "" if entry is None else entry["volume_ml"]
        return cells

    def measure(self, name: str, labels: np.ndarray, affine: np.ndarray, image: np.ndarray | None,
                uncertainty: np.ndarray | None, source: Path, output_dir: Path,
                lesions: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """Statistics, plan checks and thumbnail of one case; returns what the batch record keeps:
        ``{"statistics": record, "plan_flags": [Flag.to_dict(), ...]}``, and for a model with lesion structures
        ``"lesions"`` (count and volume per structure, :func:`lesion_summary`) and ``"lesion_rows"`` (the rows of
        ``lesion_statistics.csv``: ``lesions`` as measured for the batch, or else counted here)."""
        from medseg_attn.plots import save_thumbnail_png

        record = case_statistics(labels, affine, self.names, image, uncertainty, self.unit, name, source)
        if self.statistics:
            write_case_statistics(record, OutputLayout(output_dir).case_statistics(name))
        thumbnail = OutputLayout(output_dir).thumbnail(name)
        picture = image if image is not None else (labels > 0).astype(np.float32)
        save_thumbnail_png(thumbnail, picture, labels, affine, classes=max(self.names, default=1) + 1)
        flags = plan_flags(record, self.plan_spacing, self.patch_size, self.intensity, self.settings)
        if self.fingerprint and image is not None:  # spacing, orientation, intensity, volume, fragments vs training
            features = case_features(image, affine, self.fingerprint.get("ct", False), record["structures"])
            flags = [f for f in flags if f.measure != "spacing"]  # the fingerprint's spacing range replaces it
            flags += fingerprint_flags(features, self.fingerprint)
        return {"statistics": record, "plan_flags": [f.to_dict() for f in flags],
                **self._lesions(name, labels, affine, lesions)}

    def _lesions(self, name: str, labels: np.ndarray, affine: np.ndarray, rows: list[dict[str, Any]] | None
                 ) -> dict[str, Any]:
        """The record's lesion entries (none for a model without lesion structures)."""
        if not self.lesion_structures:
            return {}
        if rows is None:
            values = {n: i for i, n in self.names.items()}
            structures = {values[n]: n for n in self.lesion_structures if n in values}
            rows = lesion_table(labels, affine, structures, None, None, None, self.unit, name, self.channels,
                                limit=None).rows
        return {"lesions": lesion_summary(rows, self.lesion_structures), "lesion_rows": rows}

    def case(self, result: Any, name: str, source: Path, output_dir: Path) -> dict[str, Any]:
        """Measure a :class:`~medseg_attn.segmentation.inference.predictor.Prediction` (its ``image``: original
        values; its ``lesions`` when the batch measured them)."""
        lesions = getattr(result, "lesions", None)
        return self.measure(name, result.labels, result.affine, result.image, result.uncertainty, source, output_dir,
                            lesions.rows if lesions is not None else None)

    def skipped(self, name: str, files: list[Path], series_uid: str | None, output_dir: Path,
                resample_uneven: bool = False, volume_index: int | None = None) -> dict[str, Any]:
        """Measure a case whose outputs exist (an earlier run): its statistics file (when its thumbnail exists too
        and the model has no fingerprint, whose flags need the image), or else its label map and input.

        A case that cannot be measured (no NIfTI output, unreadable input) is logged and left without numbers.
        """
        layout = OutputLayout(output_dir)
        saved, thumbnail = layout.case_statistics(name), layout.thumbnail(name)
        lesions = self._saved_lesions(layout.lesions(name))  # None: counted again from the label map
        counted = lesions is not None or not self.lesion_structures
        if saved.exists() and thumbnail.exists() and not self.fingerprint and counted:  # fingerprint flags: image
            try:
                record = read_case_statistics(saved)
                flags = plan_flags(record, self.plan_spacing, self.patch_size, self.intensity, self.settings)
                return {"statistics": record, "plan_flags": [f.to_dict() for f in flags],
                        **({"lesions": lesion_summary(lesions, self.lesion_structures), "lesion_rows": lesions}
                           if self.lesion_structures else {})}
            except ValueError as error:
                logger.warning("%s; measuring the case again", error)
        try:
            labels, affine, image, uncertainty = _read_outputs(name, files, series_uid, output_dir, resample_uneven,
                                                               volume_index)
        except (ValueError, OSError) as error:
            logger.warning("%s: no statistics for the existing outputs (%s)", name, error)
            return {"statistics": None, "plan_flags": []}
        return self.measure(name, labels, affine, image, uncertainty, files[0], output_dir, lesions)

    def _saved_lesions(self, path: Path) -> list[dict[str, Any]] | None:
        """The rows of a case's ``<case>_lesions.csv`` from an earlier run (None: none, or unreadable)."""
        if not self.lesion_structures or not path.exists():
            return None
        try:
            return read_csv_rows(path)
        except (OSError, ValueError) as error:
            logger.warning("%s: unreadable (%s); counting the lesions again", path, error)
            return None

    def write(self, records: list[dict[str, Any]], output_dir: Path) -> list[dict[str, Any]]:
        """``statistics.csv`` (with ``statistics``), ``qc/volumes.png`` and ``report.html``; returns the cases
        worst first (each with ``flags``, a list of :class:`~medseg_attn.segmentation.qc.review.Flag`, and
        ``score``)."""
        from medseg_attn.plots import save_distributions_png

        layout = OutputLayout(output_dir)
        cases = [{"case": r["case"], "input": r["input"], "output": r.get("output", ""), "status": r["status"],
                  "error": r.get("error", ""), **(r.get("review") or {"statistics": None, "plan_flags": []})}
                 for r in records]
        ranked = flag_cases(cases, self.settings, fingerprinted=bool(self.fingerprint))
        measured = [c["statistics"] for c in cases if c.get("statistics")]
        if self.statistics:
            write_statistics_csv(measured, layout.statistics_csv, self.unit)
            if self.lesion_structures:
                rows = [row for c in cases for row in c.get("lesion_rows") or []]
                write_csv(layout.lesion_statistics_csv, rows, lesion_columns(self.channels, self.unit))
        volumes: dict[str, list[tuple[str, float, bool]]] = {name: [] for name in self.names.values()}
        for case in ranked:
            for row in (case["statistics"] or {}).get("structures", []):
                if row["voxels"]:
                    flagged = any(f.structure == row["structure"] for f in case["flags"])
                    volumes.setdefault(row["structure"], []).append((case["case"], row["volume_ml"], flagged))
        layout.qc_dir.mkdir(parents=True, exist_ok=True)
        save_distributions_png(layout.volumes_png, volumes, "ml",
                               f"Volume per structure over {len(measured)} case(s); red: flagged")
        atomic_write_text(layout.report_html, render_report(ranked, self, output_dir))
        flagged = sum(1 for c in ranked if c["flags"])
        logger.info("QC report: %d of %d case(s) flagged -> %s", flagged, len(ranked), layout.report_html)
        for line in checks_not_run(ranked, self.settings):
            logger.info("QC report: %s", line)
        return ranked


def _read_outputs(name: str, files: list[Path], series_uid: str | None, output_dir: Path, resample_uneven: bool,
                  volume_index: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """The label map (and uncertainty map) written for a case, and its input image, on the input's grid."""
    from medseg_attn.io.readers import LoadVolumed
    from medseg_attn.io.volumes import grid_mapping, on_grid

    layout = OutputLayout(output_dir)
    label_path = layout.label_map(name)
    if not label_path.exists():
        raise FileNotFoundError(f"{label_path}: not found (statistics need the NIfTI output)")
    loaded = LoadVolumed("image", series_uid=series_uid, resample_uneven=resample_uneven).load(
        files if len(files) > 1 else files[0])
    channel = volume_index if volume_index is not None and loaded.shape[0] > 1 else 0
    image = np.asarray(loaded[channel], dtype=np.float32)
    affine = np.asarray(loaded.affine, dtype=np.float64)
    if image.ndim == 2:
        affine = affine_4x4(affine, 2)
    maps = []
    for path in (label_path, layout.uncertainty(name)):
        if not path.exists():
            maps.append(None)
            continue
        stored = load_nifti(path, warn=False)
        data = np.asanyarray(stored.dataobj)
        data = data.reshape(data.shape[:image.ndim]) if data.ndim > image.ndim else data
        mapping = grid_mapping(data.shape, stored.affine, image.shape, affine) if data.ndim == 3 else None
        if mapping is None and data.shape != image.shape:
            raise UserError(f"{path}: not on the grid of {files[0]}")
        maps.append(np.asarray(on_grid(data, mapping) if mapping else data))
    labels = np.rint(maps[0]).astype(np.int32)
    return labels, affine, image, maps[1]


def _cell(text: Any, value: Any = None, css: str = "") -> str:
    data = "" if value is None else f' data-value="{html.escape(str(value))}"'
    cls = f' class="{css}"' if css else ""
    return f"<td{cls}{data}>{html.escape(str(text))}</td>"


def _files(case: dict[str, Any], output_dir: Path) -> list[tuple[str, str]]:
    """(label, link) of every file of the case that exists, the input last (a file in ``output_dir``: a relative
    link; elsewhere: a file:// URI)."""
    links = []
    for target in [t for t in str(case.get("output") or "").split(";") if t]:
        path = Path(target)
        if path.exists():
            links.append((path.name, path.name if path.parent.resolve() == output_dir.resolve() else path.as_uri()))
    saved = OutputLayout(output_dir).case_statistics(case['case'])
    if saved.exists():
        links.append((saved.name, saved.name))
    source = Path(case["input"])
    if source.exists():
        links.append(("input", source.resolve().as_uri()))
    return links


def render_report(ranked: list[dict[str, Any]], review: Review, output_dir: Path) -> str:
    """The HTML text of ``report.html`` for cases ranked worst first (see :meth:`Review.write`)."""
    names = list(review.names.values())
    per_structure = len(names) <= MAX_VOLUME_COLUMNS
    header = ['<th data-first="asc">rank</th>', '<th class="text" data-first="asc">case</th>',
              '<th data-first="desc">score</th>', '<th class="text" data-first="asc">flags</th>']
    header += [f'<th data-first="desc" data-flag="{kind}">{kind}</th>' for kind in FLAG_KINDS]
    header += ([f'<th data-first="desc">{html.escape(n)} (ml)</th>' for n in names] if per_structure
               else ['<th data-first="desc">foreground (ml)</th>'])
    for name in review.lesion_structures:
        header += [f'<th data-first="desc">{html.escape(name)} lesions</th>',
                   f'<th data-first="desc">{html.escape(name)} lesion volume (ml)</th>']
    header += ['<th data-first="desc">uncertainty</th>', '<th class="text">thumbnail</th>']
    rows, details = [], []
    for rank, case in enumerate(ranked, start=1):
        anchor = f"case-{rank}"
        stats = case.get("statistics") or {}
        by_name = {r["structure"]: r for r in stats.get("structures", [])}
        kinds = {kind: sum(f.severity for f in case["flags"] if f.kind == kind) for kind in FLAG_KINDS}
        cells = [_cell(rank, rank), f'<td class="text"><a href="#{anchor}">{html.escape(case["case"])}</a></td>',
                 _cell(f"{case['score']:g}", case["score"]),
                 f'<td class="flags">{html.escape(", ".join(dict.fromkeys(f.kind for f in case["flags"])) or "-")}'
                 '</td>']
        cells += [_cell(f"{kinds[k]:.1f}" if kinds[k] else "", round(kinds[k], 3),
                        ("flag " + k) if kinds[k] else "") for k in FLAG_KINDS]
        if per_structure:
            for name in names:
                volume = (by_name.get(name) or {}).get("volume_ml")
                cells.append(_cell("" if volume is None else f"{volume:.4g}", volume))
        else:
            total = sum(r["volume_ml"] or 0 for r in by_name.values()) if by_name else None
            cells.append(_cell("" if total is None else f"{total:.4g}", total))
        for name in review.lesion_structures:
            entry = (case.get("lesions") or {}).get(name)
            cells += [_cell("", None) if entry is None else _cell(entry["lesions"], entry["lesions"]),
                      _cell("", None) if entry is None else _cell(f"{entry['volume_ml']:.4g}", entry["volume_ml"])]
        uncertainty = stats.get("uncertainty_foreground_mean")
        cells.append(_cell("" if uncertainty is None else f"{uncertainty:.4f}", uncertainty))
        thumbnail = OutputLayout(output_dir).thumbnail(case['case'])
        image = (f'<a href="#{anchor}"><img class="thumb" src="qc/{html.escape(thumbnail.name)}" alt="'
                 f'{html.escape(case["case"])}"></a>' if stats and thumbnail.exists() else "")
        cells.append(f'<td class="text">{image}</td>')
        css = ' class="failed"' if case["status"] == "failed" else ""
        rows.append(f'<tr data-rank="{rank}" data-case="{html.escape(case["case"])}"{css}>{"".join(cells)}</tr>')
        details.append(_detail(case, rank, anchor, review, output_dir))
    worst = ranked[0] if ranked else None
    if worst is not None and worst["flags"]:
        worst_link = (f'<a class="worst" id="open-worst" href="#case-1">Open the worst case: '
                      f'{html.escape(worst["case"])} (score {worst["score"]:g})</a>')
    else:
        worst_link = '<span class="worst none">No case flagged</span>'
    flagged = sum(1 for c in ranked if c["flags"])
    failed = sum(1 for c in ranked if c["status"] == "failed")
    summary = (f"{len(ranked)} case(s); {flagged} flagged for review; {failed} failed. Output folder: "
               f"{html.escape(str(output_dir.resolve()))}")
    if review.missing_channels:
        summary += (f"<br>Channels missing from every input, filled as missing sequences (--channels): "
                    f"{html.escape(', '.join(review.missing_channels))}")
    for line in checks_not_run(ranked, review.settings):
        summary += f'<br><span class="not-run">{html.escape(line)}</span>'
    distributions = ('<img src="qc/volumes.png" alt="volume per structure across the batch">'
                     if OutputLayout(output_dir).volumes_png.exists() else "<p>no volumes</p>")
    template = Template(resources.files("medseg_attn.resources").joinpath("qc_report.html").read_text())
    settings = json.dumps({k: v for k, v in asdict(review.settings).items()}, separators=(", ", ": "))
    return template.substitute(title="medseg-attn QC report", summary=summary, worst_link=worst_link,
                               header="".join(header), rows="\n".join(rows), distributions=distributions,
                               details="\n".join(details), settings=html.escape(settings))


def checks_not_run(cases: list[dict[str, Any]], settings: ReviewSettings) -> list[str]:
    """One line per review check that did not run on this batch, and why (the batch comparisons need
    ``min_batch_cases`` measured cases, or non-empty values of a structure)."""
    need = max(settings.min_batch_cases, 2)
    measured = [case for case in cases if case.get("statistics")]
    if len(measured) < need:
        return [f"Not run: the batch comparisons (volume, uncertainty and intensity outliers) need at least {need} "
                f"measured cases (review setting min_batch_cases), this batch has {len(measured)}; the per-case "
                f"checks (empty, fragmented, expected_volume_ml, geometry) ran."]
    lines = []
    counts: dict[str, int] = {}
    for case in measured:
        for row in case["statistics"].get("structures", []):
            counts[row["structure"]] = counts.get(row["structure"], 0) + bool(row.get("volume_ml"))
    short = [f"{name} ({count})" for name, count in counts.items() if count < need]
    if short:
        lines.append(f"Not run: the volume outlier check of {', '.join(short)}: it needs at least {need} cases where "
                     f"the structure is present (review setting min_batch_cases).")
    return lines


def _detail(case: dict[str, Any], rank: int, anchor: str, review: Review, output_dir: Path) -> str:
    """One case's section: flags with their reasons, pictures, statistics per structure, file links."""
    parts = [f'<div class="case" id="{anchor}"><h3>{rank}. {html.escape(case["case"])} '
             f'<span class="muted">score {case["score"]:g}, {html.escape(case["status"])}</span></h3>']
    if case["flags"]:
        items = "".join(f"<li><b>{html.escape(f.kind)}</b> ({f.severity:.2f}): {html.escape(f.detail)}</li>"
                        for f in case["flags"])
        parts.append(f"<ul>{items}</ul>")
    thumbnail = OutputLayout(output_dir).thumbnail(case['case'])
    if case.get("statistics") and thumbnail.exists():
        parts.append(f'<img src="qc/{html.escape(thumbnail.name)}" alt="thumbnail of {html.escape(case["case"])}">')
    overlay = OutputLayout(output_dir).overlay(case['case'])
    if overlay.exists():
        parts.append(f'<p>Uncertainty / attention overlay:</p><img src="{html.escape(overlay.name)}" '
                     f'alt="overlay of {html.escape(case["case"])}">')
    stats = case.get("statistics")
    if stats:
        unit = f" ({stats['intensity_unit'].upper()})" if stats.get("intensity_unit") else ""
        suffix = f"_{stats['intensity_unit']}" if stats.get("intensity_unit") else ""
        head = ("<tr><th class='text'>structure</th><th>voxels</th><th>volume (ml)</th><th>components</th>"
                f"<th>largest share</th><th>mean{unit}</th><th>sd{unit}</th><th>uncertainty</th></tr>")
        body = "".join(
            "<tr>" + _cell(r["structure"], css="text") + _cell(r["voxels"]) + _cell(f"{r['volume_ml']:.4g}")
            + _cell(r["components"]) + _cell("" if r["largest_component_share"] is None
                                             else f"{r['largest_component_share']:.3f}")
            + _cell(_number(r.get(f"intensity_mean{suffix}"))) + _cell(_number(r.get(f"intensity_sd{suffix}")))
            + _cell(_number(r.get("uncertainty_mean"))) + "</tr>" for r in stats["structures"])
        spacing = " x ".join(f"{s:g}" for s in stats["spacing_mm"])
        parts.append(f"<p class='muted'>grid {' x '.join(map(str, stats['shape']))} voxels, spacing {spacing} mm"
                     f"</p><table>{head}{body}</table>")
        if case.get("lesions"):
            counts = "; ".join(f"{html.escape(n)}: {e['lesions']} lesion(s), {e['volume_ml']:.4g} ml"
                               for n, e in case["lesions"].items())
            parts.append(f"<p class='lesions'>lesions: {counts}</p>")
    elif case["status"] == "failed":
        parts.append(f"<p>{html.escape(case.get('error') or '')}</p>")
    links = " | ".join(f'<a href="{html.escape(link)}">{html.escape(label)}</a>'
                       for label, link in _files(case, output_dir))
    parts.append(f"<p>files: {links or '-'}</p></div>")
    return "\n".join(parts)


def _number(value: Any) -> str:
    return "" if value is None else f"{value:.4g}"
